//! Prometheus: `tracer serve` scraped by a real Prometheus server; exact counter increases for
//! known traffic, the exposition format checked by promtool, a busy port, concurrent scrapes
//! under load, and the deploy/ files validated.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracer_tests::*;

const T: Duration = Duration::from_secs(30);

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running `tracer serve`, killed on drop.
struct Serve {
    child: Child,
    addr: String,
}

impl Serve {
    fn start(args: &[&str]) -> Serve {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(tracer_bin())
            .args(["serve", "--listen", &addr])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tracer serve");
        let serve = Serve { child, addr };
        // The endpoint is served once every probe is attached: from then on all is counted.
        wait_until("tracer serve", || {
            http_get(&serve.addr, "/healthz").is_some_and(|(s, _)| s == 200)
        });
        serve
    }

    fn metrics(&self) -> String {
        http_get(&self.addr, "/metrics").expect("scrape").1
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Every event lost, whatever the reason (`tracer_events_lost_total{reason}` summed).
fn lost(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with("tracer_events_lost_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One sample's value from the text format (`name{labels} value`), 0 when absent.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// A copy of sockdriver under a name no other test uses, so `--comm` selects only it. It lives
/// in a private directory (a fixed name in the shared /tmp would let another user plant a
/// symlink for root to write through, or swap the program root then runs), removed on drop.
fn unique_driver(tag: &str) -> (tempfile::TempDir, PathBuf, String) {
    let name = format!("m{tag}{}", std::process::id() % 100_000);
    let dir = tempfile::Builder::new()
        .prefix("tracer-driver-")
        .tempdir()
        .unwrap();
    let path = dir.path().join(&name);
    std::fs::copy(sockdriver_bin(), &path).unwrap();
    (dir, path, name)
}

/// N connects, M refused connects and K binds: Prometheus, scraping `tracer serve` every
/// second, sees the counters rise by exactly N+M, M and K.
#[test]
fn prometheus_scrapes_exact_counters() {
    if !prerequisites("prometheus_scrapes_exact_counters")
        || !tool(
            "prometheus_scrapes_exact_counters",
            "prometheus",
            "prometheus",
        )
        || !tool(
            "prometheus_scrapes_exact_counters",
            "promtool",
            "prometheus",
        )
    {
        return;
    }
    let (_driver_dir, driver, comm) = unique_driver("p");
    let serve = Serve::start(&["--comm", &comm]);
    let prom = Prometheus::start(&serve.addr);
    let up = "up{job=\"tracer\"}";
    wait_until("the first scrape", || prom.value(up) == Some(1.0));
    let connects = "sum(tracer_socket_events_total{event=\"connect\"}) or vector(0)";
    let refused = "sum(tracer_connect_errors_total{errno=\"ECONNREFUSED\"}) or vector(0)";
    let binds = "sum(tracer_socket_events_total{event=\"bind\"}) or vector(0)";
    let before = [connects, refused, binds].map(|q| prom.value(q).unwrap_or(0.0));

    let (n, m, k) = (25u64, 7u64, 5u64);
    let mut traffic = Driver::spawn_program(
        &driver,
        &[
            "metrics-traffic",
            "127.0.0.1",
            &n.to_string(),
            &m.to_string(),
            &k.to_string(),
        ],
    );
    traffic.go();
    let report = traffic.report();
    traffic.wait();
    let binds_made = report["binds"].as_u64().unwrap();
    assert_eq!(binds_made, k + 2);
    let expected = [(n + m) as f64, m as f64, binds_made as f64];
    wait_until("Prometheus to see the traffic", || {
        [connects, refused, binds]
            .iter()
            .zip(before)
            .zip(expected)
            .all(|((q, b), e)| prom.value(q).unwrap_or(0.0) - b == e)
    });
    // And a few scrapes later nothing more has been counted.
    std::thread::sleep(Duration::from_secs(3));
    for ((q, b), e) in [connects, refused, binds].iter().zip(before).zip(expected) {
        assert_eq!(prom.value(q).unwrap_or(0.0) - b, e, "{q}");
    }
    let text = serve.metrics();
    assert_eq!(
        sample(
            &text,
            "tracer_socket_events_total{event=\"accept\",family=\"ipv4\",proto=\"tcp\"}"
        ),
        n
    );
    assert_eq!(lost(&text), 0, "{text}");
}

/// `serve` (no process filter) counts TCP transitions and close(2) in the kernel without
/// sending them to the agent: for the same traffic its counters equal what a `watch` running
/// alongside sees as events, while the agent is handed far fewer records. (With a port
/// filter, as here, a counted transition reads the socket's endpoints.)
#[test]
fn serve_counts_in_the_kernel_what_watch_sees_as_events() {
    if !prerequisites("serve_counts_in_the_kernel_what_watch_sees_as_events") {
        return;
    }
    for path in Hooks::BOTH {
        let port = free_port().to_string();
        serve_matches_watch(&["--port", &port], "127.0.0.1", &port, "ipv4", path);
    }
}

/// The same without a port or namespace filter, the default `serve`, where a counted
/// transition reads only the socket's protocol and family: over IPv6 loopback (`--ipv6`),
/// where nothing else on a test machine makes connections.
#[test]
fn serve_counts_unfiltered_transitions_in_the_kernel() {
    if !prerequisites("serve_counts_unfiltered_transitions_in_the_kernel") {
        return;
    }
    for path in Hooks::BOTH {
        let port = free_port().to_string();
        serve_matches_watch(&["--ipv6"], "::1", &port, "ipv6", path);
    }
}

/// Runs `serve FILTER` and `watch FILTER` side by side, both on `path`, over 300 connections
/// to `ip`:`port` and holds serve's counters to watch's events.
fn serve_matches_watch(filter: &[&str], ip: &str, port: &str, family: &str, path: Hooks) {
    let mut args = filter.to_vec();
    if path.syscalls() {
        args.push("--syscalls");
    }
    let serve = Serve::start(&args);
    let watch = path.watch(filter);
    let n = 300u64;
    let mut load = Driver::spawn(&["tcp-count", ip, &n.to_string(), port]);
    load.go();
    load.report();
    load.wait();
    // The last connections' final transitions run after the driver is gone.
    std::thread::sleep(Duration::from_millis(1500));
    let text = serve.metrics();
    let (_, records) = watch.stop_with(libc::SIGINT);
    let events: Vec<&Value> = records.iter().filter(|r| r["type"] == "event").collect();
    let seen = |name: &str| events.iter().filter(|e| e["event"] == name).count() as u64;
    let states = seen("state");
    // Every connection: three-way handshake, four-way close, on both sides.
    assert!(
        states >= 8 * n,
        "watch saw {states} transitions for {n} connections"
    );
    let counted = |series: &str| sample(&text, series);
    for event in ["state", path.end(), "connect", "accept"] {
        assert_eq!(
            counted(&format!(
                "tracer_socket_events_total{{event=\"{event}\",family=\"{family}\",proto=\"tcp\"}}"
            )),
            seen(event),
            "{event} events"
        );
    }
    assert!(
        seen(path.end()) > 2 * n,
        "client, accepted and listening sockets closed"
    );
    for from in [
        "SYN_SENT",
        "ESTABLISHED",
        "FIN_WAIT1",
        "CLOSE_WAIT",
        "LAST_ACK",
    ] {
        let by_watch = events
            .iter()
            .filter(|e| e["event"] == "state" && e["old_state"] == from)
            .count() as u64;
        let by_serve = total(
            &text,
            "tracer_tcp_state_transitions_total",
            &format!("from=\"{from}\""),
        );
        assert_eq!(by_serve, by_watch, "transitions from {from}");
    }
    assert!(
        counted("tracer_tcp_state_transitions_total{from=\"SYN_SENT\",to=\"ESTABLISHED\"}") >= n
    );
    // Only what the socket table needs travelled: about 7 records per connection, not 17.
    let processed = counted("tracer_events_processed_total{source=\"ringbuf\"}");
    assert!(
        processed < events.len() as u64 / 2,
        "serve processed {processed} records, watch {} events",
        events.len()
    );
    assert_eq!(lost(&text), 0, "{text}");
}

/// The same for UDP request/response traffic: sends and receives that did not autobind their
/// socket are counted in the kernel, never sent, and the counts equal watch's events.
#[test]
fn serve_counts_udp_calls_in_the_kernel() {
    if !prerequisites("serve_counts_udp_calls_in_the_kernel") {
        return;
    }
    for path in Hooks::BOTH {
        serve_counts_udp_calls_on(path);
    }
}

fn serve_counts_udp_calls_on(path: Hooks) {
    let netns = TestNetns::new("mudp");
    let mut args = vec!["--netns", &netns.name];
    if path.syscalls() {
        args.push("--syscalls");
    }
    let serve = Serve::start(&args);
    let watch = path.watch(&["--netns", &netns.name]);
    udp_round_trips_in(&netns.name);
    std::thread::sleep(Duration::from_millis(1000));
    let text = serve.metrics();
    let (_, records) = watch.stop_with(libc::SIGINT);
    let events: Vec<&Value> = records.iter().filter(|r| r["type"] == "event").collect();
    let mut calls = 0;
    for name in ["sendto", "recvfrom", "sendmsg", "recvmsg"] {
        let by_watch = events.iter().filter(|e| e["event"] == name).count() as u64;
        let by_serve = total(
            &text,
            "tracer_socket_events_total",
            &format!("event=\"{name}\""),
        );
        assert_eq!(by_serve, by_watch, "{name} calls");
        calls += by_watch;
    }
    // About 2,000 request/response round trips, four calls each.
    assert!(calls >= 4 * 1000, "watch saw {calls} UDP calls");
    let processed = sample(&text, "tracer_events_processed_total{source=\"ringbuf\"}");
    assert!(
        processed < calls / 10,
        "serve processed {processed} records for {calls} UDP calls"
    );
    assert_eq!(lost(&text), 0, "{text}");
}

/// About 2,000 UDP request/response round trips (one second, paced) inside `netns`.
fn udp_round_trips_in(netns: &str) {
    let load = sockdriver_bin().with_file_name("loadgen");
    let status = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(&load)
        .args(["udp", "1", "1", "2000"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// The sum of a metric's samples whose labels contain `label` (`name="value"`).
fn total(text: &str, metric: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `promtool check metrics` finds nothing wrong with what tracer serves.
#[test]
fn exposition_passes_promtool() {
    if !prerequisites("exposition_passes_promtool")
        || !tool("exposition_passes_promtool", "promtool", "prometheus")
    {
        return;
    }
    let serve = Serve::start(&[]);
    // Some traffic so that every family has samples.
    let mut d = Driver::spawn(&["metrics-traffic", "127.0.0.1", "3", "2", "1"]);
    d.go();
    d.report();
    d.wait();
    std::thread::sleep(Duration::from_millis(1200));
    let text = serve.metrics();
    for family in [
        "tracer_socket_events_total",
        "tracer_connect_errors_total",
        "tracer_tcp_state_transitions_total",
        "tracer_listening_sockets",
        "tracer_listen_port_info",
        "tracer_ephemeral_ports_in_use",
        "tracer_ephemeral_port_range_size",
        "tracer_ephemeral_ports_exclusive",
        "tracer_ephemeral_destination_ports_in_use",
        "tracer_ephemeral_destination_connect_failures",
        "tracer_ephemeral_connect_failures_total",
        "tracer_events_lost_total",
        "tracer_events_processed_total",
        "tracer_build_info",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{text}"
        );
    }
    let problems = promtool_problems(&text);
    assert!(problems.is_empty(), "{problems}");
    // Other paths.
    assert_eq!(
        http_get(&serve.addr, "/healthz").unwrap(),
        (200, "ok\n".into())
    );
    assert_eq!(http_get(&serve.addr, "/nope").unwrap().0, 404);
}

/// A port that is taken: a clear message and a non-zero exit, before anything is loaded.
#[test]
fn busy_port_is_a_clear_error() {
    if !prerequisites("busy_port_is_a_clear_error") {
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(tracer_bin())
        .args(["serve", "--listen", &addr])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot serve metrics on {addr}")) && err.contains("in use"),
        "{err}"
    );
    let out = Command::new(tracer_bin())
        .args(["watch", "--metrics", &addr, "--duration", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// Four scrapers hammer /metrics while 10,000 connections run: every scrape is whole, the
/// counters never go down, and they end exactly at 10,000.
#[test]
fn concurrent_scrapes_under_load() {
    if !prerequisites("concurrent_scrapes_under_load") {
        return;
    }
    let (_driver_dir, driver, comm) = unique_driver("c");
    let serve = Serve::start(&["--comm", &comm, "--ringbuf-kib", "65536"]);
    let series = "tracer_socket_events_total{event=\"connect\",family=\"ipv4\",proto=\"tcp\"}";
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scrapers: Vec<_> = (0..4)
        .map(|_| {
            let addr = serve.addr.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut last = 0;
                let mut scrapes = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, body) = http_get(&addr, "/metrics").expect("scrape");
                    assert_eq!(status, 200);
                    assert!(
                        body.contains("# TYPE tracer_build_info gauge"),
                        "whole body"
                    );
                    let now = sample(&body, series);
                    assert!(now >= last, "counter went down: {last} -> {now}");
                    last = now;
                    scrapes += 1;
                }
                scrapes
            })
        })
        .collect();
    let mut load = Driver::spawn_program(&driver, &["tcp-count", "127.0.0.1", "10000"]);
    load.go();
    load.report();
    load.wait();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes: usize = scrapers.into_iter().map(|s| s.join().unwrap()).sum();
    assert!(scrapes > 20, "the scrapers ran ({scrapes})");
    let text = serve.metrics();
    assert_eq!(sample(&text, series), 10_000);
    assert_eq!(
        sample(
            &text,
            "tracer_socket_events_total{event=\"accept\",family=\"ipv4\",proto=\"tcp\"}"
        ),
        10_000
    );
}

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// The alert rules and scrape config pass promtool; the DaemonSet and the systemd unit say what
/// tracer needs; the dashboard only uses metrics tracer serves.
#[test]
fn deploy_files_are_valid() {
    if !tool("deploy_files_are_valid", "promtool", "prometheus") {
        return;
    }
    for args in [
        vec![
            "check",
            "rules",
            deploy("prometheus/alerts.yml").to_str().unwrap(),
        ],
        vec![
            "check",
            "config",
            deploy("prometheus/prometheus.yml").to_str().unwrap(),
        ],
        // The alert rules' own unit tests (each rule fires above its threshold, not below).
        vec![
            "test",
            "rules",
            deploy("prometheus/alerts_test.yml").to_str().unwrap(),
        ],
    ] {
        let out = Command::new("promtool").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The DaemonSet (kubectl is not available offline: parse and check what matters).
    let text = std::fs::read_to_string(deploy("kubernetes/daemonset.yaml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("valid YAML");
    let ds = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .expect("a DaemonSet");
    assert_eq!(ds["apiVersion"].as_str(), Some("apps/v1"));
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true));
    assert_eq!(spec["hostPID"].as_bool(), Some(true));
    let container = &spec["containers"][0];
    let caps: Vec<&str> = container["securityContext"]["capabilities"]["add"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    for cap in ["BPF", "PERFMON", "SYS_ADMIN"] {
        assert!(caps.contains(&cap), "capability {cap}");
    }
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    for path in [
        "/sys/kernel/btf",
        "/sys/kernel/tracing",
        "/sys/fs/cgroup",
        "/host/run",
    ] {
        assert!(mounts.contains(&path), "mount {path}");
    }
    assert_eq!(container["args"][0].as_str(), Some("serve"));
    let unit = std::fs::read_to_string(deploy("systemd/tracer.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/tracer serve --listen 127.0.0.1:9464"));
    // The dashboard's queries name only metrics tracer exposes.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/tracer-dashboard.json")).unwrap(),
    )
    .expect("dashboard JSON");
    let known = [
        "tracer_socket_events_total",
        "tracer_connect_errors_total",
        "tracer_bind_errors_total",
        "tracer_tcp_state_transitions_total",
        "tracer_listening_sockets",
        "tracer_listen_port_info",
        "tracer_ephemeral_ports_in_use",
        "tracer_ephemeral_port_range_size",
        "tracer_events_lost_total",
        "tracer_events_processed_total",
        "tracer_build_info",
        "tracer_tcp_retransmits_total",
        "tracer_tcp_resets_total",
        "tracer_packet_drops_total",
        "tracer_tcp_connect_seconds_bucket",
        "tracer_tcp_connect_seconds_count",
        "tracer_tcp_accept_wait_seconds_bucket",
        "tracer_listen_queue_length",
        "tracer_listen_backlog",
        "tracer_listen_overflows_total",
        "tracer_container_connect_errors_total",
        "tracer_container_ephemeral_ports_in_use",
    ];
    let mut queries = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("tracer_"))
                .collect();
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                assert!(known.contains(&name), "unknown metric {name} in {expr}");
            }
            queries += 1;
        }
    }
    assert!(queries >= 8);
}

/// A burst larger than the ring buffer while `serve` is stopped: the lost events show in
/// tracer_events_lost_total, the kernel-side counters stay exact anyway, and once resumed the
/// agent carries on.
#[test]
fn overflow_is_counted_and_counters_stay_exact() {
    if !prerequisites("overflow_is_counted_and_counters_stay_exact") {
        return;
    }
    let (_driver_dir, driver, comm) = unique_driver("o");
    let serve = Serve::start(&["--comm", &comm, "--ringbuf-kib", "4"]);
    unsafe { libc::kill(serve.child.id() as i32, libc::SIGSTOP) };
    let mut burst =
        Driver::spawn_program(&driver, &["metrics-traffic", "127.0.0.1", "300", "0", "0"]);
    burst.go();
    burst.report();
    burst.wait();
    unsafe { libc::kill(serve.child.id() as i32, libc::SIGCONT) };
    let series = "tracer_socket_events_total{event=\"connect\",family=\"ipv4\",proto=\"tcp\"}";
    let text = serve.metrics();
    assert!(
        sample(&text, "tracer_events_lost_total{reason=\"ring_full\"}") > 0,
        "{text}"
    );
    assert_eq!(
        sample(&text, series),
        300,
        "counted in the kernel, lost or not"
    );
    // It recovers: a later burst is processed.
    let before = sample(&text, "tracer_events_processed_total{source=\"ringbuf\"}");
    let mut more = Driver::spawn_program(&driver, &["metrics-traffic", "127.0.0.1", "5", "0", "0"]);
    more.go();
    more.report();
    more.wait();
    wait_until("the agent to process new events", || {
        sample(
            &serve.metrics(),
            "tracer_events_processed_total{source=\"ringbuf\"}",
        ) > before
    });
    assert_eq!(sample(&serve.metrics(), series), 305);
}

/// The socket path (the default) and the syscall path (`--syscalls`), side by side on the same
/// traffic in one namespace — TCP connections, refused connects, binds, UDP datagrams — count
/// the same: sockets made, binds, listens, TCP connects, accepts, releases, every TCP
/// transition, refused connects, datagrams sent and received.
#[test]
fn socket_and_syscall_paths_count_the_same() {
    if !prerequisites("socket_and_syscall_paths_count_the_same") {
        return;
    }
    let netns = TestNetns::new("paths");
    let sockets = Serve::start(&["--netns", &netns.name]);
    let syscalls = Serve::start(&["--netns", &netns.name, "--syscalls"]);
    let mut traffic = Driver::spawn_in_netns(
        &netns.name,
        &["metrics-traffic", "127.0.0.1", "100", "10", "5"],
    );
    traffic.go();
    traffic.report();
    traffic.wait();
    udp_round_trips_in(&netns.name);
    // The last transitions (TIME_WAIT hand-offs, the listener's close) follow the driver.
    std::thread::sleep(Duration::from_millis(1500));
    let (by_sockets, by_syscalls) = (sockets.metrics(), syscalls.metrics());
    let both = |series: &str| (sample(&by_sockets, series), sample(&by_syscalls, series));
    for event in ["socket", "bind", "listen", "accept", "release"] {
        for proto in ["tcp", "udp"] {
            let series = format!(
                "tracer_socket_events_total{{event=\"{event}\",family=\"ipv4\",proto=\"{proto}\"}}"
            );
            let (a, b) = both(&series);
            assert_eq!(a, b, "{series}: socket path {a}, syscall path {b}");
        }
    }
    let (a, b) =
        both("tracer_socket_events_total{event=\"connect\",family=\"ipv4\",proto=\"tcp\"}");
    assert_eq!(a, b, "TCP connects");
    assert!(a >= 110, "100 connections and 10 refused: {a}");
    let transitions = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| {
                l.starts_with("tracer_tcp_state_transitions_total{")
                    || l.starts_with("tracer_connect_errors_total{")
            })
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        transitions(&by_sockets),
        transitions(&by_syscalls),
        "TCP transitions and connect errors"
    );
    // A datagram with an address: sendto/recvfrom on one path, sendmsg/recvmsg on the other.
    let udp = |text: &str, calls: &[&str]| -> u64 {
        calls
            .iter()
            .map(|c| {
                sample(
                    text,
                    &format!(
                        "tracer_socket_events_total{{event=\"{c}\",family=\"ipv4\",proto=\"udp\"}}"
                    ),
                )
            })
            .sum()
    };
    let sends = (
        udp(&by_sockets, &["sendmsg"]),
        udp(&by_syscalls, &["sendto", "sendmsg"]),
    );
    let receives = (
        udp(&by_sockets, &["recvmsg"]),
        udp(&by_syscalls, &["recvfrom", "recvmsg"]),
    );
    assert_eq!(sends.0, sends.1, "UDP sends");
    assert_eq!(receives.0, receives.1, "UDP receives");
    assert!(
        sends.0 >= 2 * 1000,
        "about 2,000 round trips, two sends each: {sends:?}"
    );
    for text in [&by_sockets, &by_syscalls] {
        assert_eq!(lost(text), 0, "{text}");
    }
}
