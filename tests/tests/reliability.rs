//! Reliability: odd and hostile inputs, `kill -9` leaving nothing loaded, two tracers at once.
use std::time::{Duration, Instant};

use serde_json::Value;
use tracer_tests::*;

const T: Duration = Duration::from_secs(20);

fn events_of(records: &[Value], pid: u64) -> Vec<&Value> {
    records
        .iter()
        .filter(|e| e["type"] == "event" && e["pid"] == pid)
        .collect()
}

/// dup2'd fds, threads sharing a socket, close() on a file, a socket passed with SCM_RIGHTS to
/// a child that exits with it open, and sockaddrs the kernel rejects: every event is right and
/// tracer never reads past the caller's buffer.
#[test]
fn odd_and_hostile_inputs() {
    if !prerequisites("odd_and_hostile_inputs") {
        return;
    }
    let mut driver = Driver::spawn(&["hostile", "127.0.0.1"]);
    let pid = driver.pid as u64;
    // Fds, dup2 and the sockaddrs a call passed are what this tests: the syscall path's.
    let mut tracer = Hooks::Syscalls.watch(&["--pid", &driver.pid.to_string()]);
    driver.go();
    let r = driver.report();
    driver.wait();
    let child = r["child"].as_u64().unwrap();
    tracer.wait_for("the child's release and the bad connect", T, |ev| {
        ev.iter()
            .any(|e| e["event"] == "release" && e["pid"] == child)
            && ev
                .iter()
                .any(|e| e["event"] == "connect" && e["errno"] == "EINVAL")
    });
    let (_, records) = tracer.stop_with(libc::SIGINT);
    let mine = events_of(&records, pid);

    // dup2: the bind on fd 100 is the socket's.
    let dup_bind = mine
        .iter()
        .find(|e| e["event"] == "bind" && e["fd"] == r["dup_fd"])
        .expect("bind on the dup2'd fd");
    assert_eq!(dup_bind["lport"], r["dup_port"]);

    // Threads: bind in one, listen in another; one process, one socket, two tids.
    let bind = mine
        .iter()
        .find(|e| e["event"] == "bind" && e["lport"] == r["threads_port"])
        .expect("the threads' bind");
    let listen = mine
        .iter()
        .find(|e| e["event"] == "listen" && e["lport"] == r["threads_port"])
        .expect("the threads' listen");
    assert_eq!(bind["tid"], r["bind_tid"]);
    assert_eq!(listen["tid"], r["listen_tid"]);
    assert_eq!(bind["sock"], listen["sock"]);

    // close() on /dev/null: no event; every close event is about a socket.
    assert!(records
        .iter()
        .filter(|e| e["event"] == "close")
        .all(|e| e["sock"] != "0x0" && e["proto"] != "-"));

    // SCM_RIGHTS: the parent bound it, the child listened on it and exited holding it.
    let parent_bind = mine
        .iter()
        .find(|e| e["event"] == "bind" && e["lport"] == r["passed_port"])
        .expect("the parent's bind");
    let child_events = events_of(&records, child);
    let child_listen = child_events
        .iter()
        .find(|e| e["event"] == "listen")
        .expect("the child's listen on the passed socket");
    assert_eq!(child_listen["sock"], parent_bind["sock"]);
    assert_eq!(child_listen["lport"], r["passed_port"]);
    let release = child_events
        .iter()
        .find(|e| e["event"] == "release" && e["sock"] == parent_bind["sock"])
        .expect("released when the child exited");
    assert_eq!(release["comm"], "sockdriver");

    // Rejected sockaddrs: the errno, and the flag saying the address could not be read.
    let bad: Vec<&&Value> = mine
        .iter()
        .filter(|e| e["fd"] == r["bad_fd"] && e["ret"] != 0)
        .collect();
    let find = |event: &str, errno: &str| {
        bad.iter()
            .find(|e| e["event"] == event && e["errno"] == errno)
            .unwrap_or_else(|| panic!("no {event} failing with {errno}: {bad:#?}"))
    };
    assert_eq!(r["huge_errno"], libc::EINVAL);
    assert_eq!(
        find("bind", "EINVAL")["bad_sockaddr"],
        true,
        "4096-byte sockaddr"
    );
    assert_eq!(
        find("connect", "EINVAL")["bad_sockaddr"],
        true,
        "1-byte sockaddr"
    );
    assert_eq!(
        find("bind", "EFAULT")["bad_sockaddr"],
        true,
        "unreadable sockaddr"
    );
}

/// `kill -9`: every program and link goes with the process (they are fd-owned); a new tracer
/// then starts cleanly, and two tracers run side by side.
#[test]
fn kill_9_leaves_nothing_and_two_tracers_coexist() {
    if !prerequisites("kill_9_leaves_nothing_and_two_tracers_coexist")
        || !tool(
            "kill_9_leaves_nothing_and_two_tracers_coexist",
            "bpftool",
            "bpftool",
        )
    {
        return;
    }
    let tracer = Tracer::watch(&[]);
    let programs = bpf_programs_of(tracer.pid());
    assert!(programs.len() >= 10, "its programs: {programs:?}");
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGKILL) };
    let (status, _) = tracer.stop_with(0);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    let deadline = Instant::now() + T;
    loop {
        let loaded = bpf_program_ids();
        let left: Vec<&u64> = programs.iter().filter(|p| loaded.contains(p)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still loaded after kill -9: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut first = Tracer::watch(&["--comm", "sockdriver", "--events", "connect"]);
    let mut second = Tracer::watch(&["--comm", "sockdriver", "--events", "connect"]);
    let mut d = Driver::spawn(&["tcp-refused", "127.0.0.1", "9"]);
    d.go();
    d.report();
    let dpid = d.pid as u64;
    d.wait();
    for t in [&mut first, &mut second] {
        t.wait_for("the connect", T, |ev| {
            ev.iter()
                .any(|e| e["event"] == "connect" && e["pid"] == dpid)
        });
    }
}

/// A `/proc/PID/status` field in KiB (VmRSS: all resident memory; RssAnon: the heap and other
/// private memory, without the ring buffer's shared mapping, whose pages become resident as
/// bursts reach further into the ring).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn gauge(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Mixed TCP/UDP churn (5,000 operations/s) for TRACER_SOAK_SECONDS (default 300) under
/// `tracer serve` in its own namespace: resident memory stays under 64 MiB past millions of
/// events, grows by less than 5 % from the end of the warm-up to the end of the run, and no
/// socket-table entry outlives its socket (unless a counted loss explains it).
#[test]
fn soak_memory_stays_bounded() {
    if !prerequisites("soak_memory_stays_bounded") {
        return;
    }
    let seconds: u64 = std::env::var("TRACER_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    // Its own namespace: the load, and only the load, is in what serve watches.
    let netns = TestNetns::new("soak");
    let load = sockdriver_bin().with_file_name("loadgen");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut serve = std::process::Command::new(tracer_bin())
        .args(["serve", "--listen", &addr, "--netns", &netns.name])
        .args(["--ringbuf-kib", "8192"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + T;
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "serve did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    let warm = Duration::from_secs((seconds / 5).clamp(5, 60));
    let mut rss_warm = 0;
    let mut resident_warm = 0;
    let mut round = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        // Alternate TCP connection storms and UDP request/response, 5 s each.
        let mode = if round.is_multiple_of(2) {
            "tcp"
        } else {
            "udp"
        };
        let st = std::process::Command::new("ip")
            .args(["netns", "exec", &netns.name])
            .arg(&load)
            // Paced (5,000 operations/s): a soak looks for leaks, not for overload (that is
            // the overflow test's job), so the agent should keep up on a busy CI machine.
            .args([mode, "1", "5", "5000"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        round += 1;
        if rss_warm == 0 && started.elapsed() >= warm {
            rss_warm = status_kib(serve.id(), "RssAnon:");
            resident_warm = status_kib(serve.id(), "VmRSS:");
        }
    }
    // The last closes reach the table once the agent has read what the ring still holds (on a
    // busy 2-CPU machine it can be seconds behind the load); the gauges follow each second.
    // A leak stays; lag goes: wait until the entries are gone or the reading stops moving.
    let settle = Instant::now();
    let mut previous = -1.0;
    let (text, processed, tracked, lost) = loop {
        std::thread::sleep(Duration::from_secs(2));
        let text = http_get(&addr, "/metrics").expect("metrics endpoint").1;
        let processed = gauge(&text, "tracer_events_processed_total");
        let tracked = gauge(&text, "tracer_sockets_tracked");
        let lost = gauge(&text, "tracer_events_lost_total");
        if tracked <= lost || processed == previous || settle.elapsed() > Duration::from_secs(30) {
            break (text, processed, tracked, lost);
        }
        previous = processed;
    };
    eprintln!("soak: settled {:?} after the load", settle.elapsed());
    let rss_end = status_kib(serve.id(), "RssAnon:");
    let resident = status_kib(serve.id(), "VmRSS:");
    unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) };
    let _ = serve.wait();
    eprintln!(
        "soak: {seconds} s, {processed} events processed, {lost} lost, private RSS {rss_warm} KiB after warm-up, {rss_end} KiB at the end, resident {resident_warm} KiB after warm-up, {resident} KiB at the end"
    );
    assert!(rss_warm > 0);
    assert!(
        processed >= 1_000_000.0,
        "the load ran ({processed} events)"
    );
    assert!(
        resident < 64 * 1024,
        "RSS {resident} KiB after {processed} events"
    );
    assert!(
        resident * 100 < resident_warm * 105,
        "RSS grew from {resident_warm} KiB after warm-up to {resident} KiB (5 % allowed)"
    );
    // Every entry leaves with its socket; only a lost event (counted) can keep one for the
    // sweep to drop later.
    assert!(
        tracked <= lost,
        "{tracked} socket-table entries outlived their sockets with {lost} events lost:\n{text}"
    );
}

/// The names of the BPF programs a process holds (bpftool shows the kernel's 15-byte names).
fn program_names_of(pid: u32) -> Vec<String> {
    let ids = bpf_programs_of(pid);
    bpf_programs()
        .iter()
        .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The benchmark's floor (`tracer __floor`): on each path, an empty program on every hook the
/// path uses and nothing else, all gone after SIGTERM.
#[test]
fn the_floor_attaches_empty_programs_only_and_detaches() {
    let name = "the_floor_attaches_empty_programs_only_and_detaches";
    if !prerequisites(name) || !tool(name, "bpftool", "bpftool") {
        return;
    }
    for (args, hooks) in [(&[][..], 12), (&["--syscalls"][..], 24)] {
        let mut floor = std::process::Command::new(tracer_bin())
            .arg("__floor")
            .args(args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("tracer __floor");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(floor.stderr.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let attached: usize = line
            .split_whitespace()
            .nth(2)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{args:?}: no count in {line:?}"));
        // The syscall path leaves accept(2) out where the architecture has none.
        assert!(attached >= hooks, "{args:?}: {line}");
        let names = program_names_of(floor.id());
        assert!(!names.is_empty(), "{args:?}: no programs");
        assert!(
            names.iter().all(|n| n.starts_with("floor_")),
            "{args:?}: {names:?}"
        );
        let ids = bpf_programs_of(floor.id());
        unsafe { libc::kill(floor.id() as i32, libc::SIGTERM) };
        assert!(floor.wait().unwrap().success(), "{args:?}");
        let deadline = Instant::now() + T;
        while ids.iter().any(|id| bpf_program_ids().contains(id)) {
            assert!(Instant::now() < deadline, "{args:?}: programs left loaded");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
