//! Harness for the end-to-end tests: runs the real `tracer` binary and the `sockdriver` helper,
//! collects tracer's JSON lines, and decides what a missing prerequisite means (a failure in CI,
//! a loud skip elsewhere).
pub mod cri;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Root and a built tracer are required. In CI their absence fails the test with a clear
/// message; elsewhere the test is skipped, loudly.
pub fn prerequisites(test: &str) -> bool {
    let mut missing = Vec::new();
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (run `cargo xtask test`, which uses sudo)".to_string());
    }
    if !tracer_bin().is_file() {
        missing.push(format!("the tracer binary at {}", tracer_bin().display()));
    }
    if missing.is_empty() {
        return true;
    }
    let reason = missing.join(" and ");
    if in_ci() {
        panic!("{test}: cannot run without {reason}");
    }
    eprintln!("\n!!!! SKIPPED {test}: needs {reason} !!!!\n");
    false
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The tracer under test: `TRACER_BIN` (relative paths from the workspace root), else the
/// release build.
pub fn tracer_bin() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::var_os("TRACER_BIN")
        .map(|p| workspace.join(p))
        .unwrap_or_else(|| target_dir().join("release/tracer"))
}

/// Built next to the test binaries: `target/<profile>/sockdriver` (tests live in `deps/`).
pub fn sockdriver_bin() -> PathBuf {
    let test_exe = std::env::current_exe().expect("test executable");
    let profile_dir = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    profile_dir.join("sockdriver")
}

/// A running `tracer watch --json`.
pub struct Tracer {
    child: Child,
    lines: Receiver<Value>,
    pub events: Vec<Value>,
}

impl Tracer {
    /// Starts `tracer watch --json ARGS` and waits until its programs are attached.
    pub fn watch(args: &[&str]) -> Tracer {
        Tracer::start("watch", args)
    }

    /// Starts `tracer SUBCOMMAND --json ARGS` and waits until it is ready.
    pub fn start(subcommand: &str, args: &[&str]) -> Tracer {
        let mut child = Command::new(tracer_bin())
            .args([subcommand, "--json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tracer");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("tracer printed non-JSON {line:?}: {e}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let mut tracer = Tracer {
            child,
            lines,
            events: Vec::new(),
        };
        let ready = tracer.next_line(Duration::from_secs(30));
        match ready {
            Some(v) if v["type"] == "ready" => tracer,
            other => {
                let status = tracer.child.try_wait();
                panic!("tracer did not become ready: {other:?}, status {status:?}")
            }
        }
    }

    fn next_line(&mut self, timeout: Duration) -> Option<Value> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Collects records (events, warnings, …) until `done(all records so far)` holds; panics after `timeout`. The
    /// predicate runs at most every 50 ms, so long event lists stay cheap.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut next_check = Instant::now();
        loop {
            if Instant::now() >= next_check {
                if done(&self.events) {
                    return;
                }
                next_check = Instant::now() + Duration::from_millis(50);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = left.min(next_check.saturating_duration_since(Instant::now()));
            match self.lines.recv_timeout(wait) {
                Ok(v) => self.events.push(v),
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(_) => {
                    if done(&self.events) {
                        return;
                    }
                    panic!(
                        "timed out waiting for {what}; events so far:\n{}",
                        self.events
                            .iter()
                            .map(|e| e.to_string())
                            .collect::<Vec<_>>()
                            .join("\n")
                    )
                }
            }
        }
    }

    /// Sends `signal`, waits for exit, and returns every record: the events collected so far,
    /// then whatever followed (summary included).
    pub fn stop_with(mut self, signal: i32) -> (std::process::ExitStatus, Vec<Value>) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = self.child.wait().expect("wait tracer");
        let mut rest = std::mem::take(&mut self.events);
        while let Ok(v) = self.lines.recv_timeout(Duration::from_secs(2)) {
            rest.push(v);
        }
        (status, rest)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            let _ = self.child.wait();
        }
    }
}

/// A `sockdriver` child: started, then told to go once tracer is attached.
pub struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Value>,
    pub pid: u32,
}

impl Driver {
    pub fn spawn(args: &[&str]) -> Driver {
        Self::start(Command::new(sockdriver_bin()), args)
    }

    /// A copy of sockdriver at another path (so another command name).
    pub fn spawn_program(program: &std::path::Path, args: &[&str]) -> Driver {
        Self::start(Command::new(program), args)
    }

    /// Runs the driver inside the named network namespace (`ip netns exec`).
    pub fn spawn_in_netns(netns: &str, args: &[&str]) -> Driver {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).arg(sockdriver_bin());
        Self::start(cmd, args)
    }

    fn start(mut cmd: Command, args: &[&str]) -> Driver {
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sockdriver");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(serde_json::from_str::<Value>(&line).expect("driver JSON"));
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("driver pid");
        let pid = first["pid"].as_u64().unwrap() as u32;
        Driver {
            child,
            stdin,
            lines,
            pid,
        }
    }

    /// Starts the scenario. Stdin stays open: some scenarios then wait for [`Driver::finish`].
    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Tells a scenario that holds its sockets open to let them go (closes its stdin).
    pub fn finish(&mut self) {
        self.stdin = None;
    }

    /// Stops a scenario that runs until killed.
    pub fn kill(self) {
        drop(self);
    }

    /// The driver's next report line.
    pub fn report(&mut self) -> Value {
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .expect("driver report")
    }

    pub fn wait(mut self) {
        self.finish();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "sockdriver failed: {status}");
    }
}

/// A failed test must not leave its scenario running (a server would linger forever).
impl Drop for Driver {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The events of one process, in order.
pub fn of_pid(events: &[Value], pid: u32) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["pid"].as_u64() == Some(pid as u64))
        .collect()
}

pub fn named<'a>(events: &[&'a Value], name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .copied()
        .filter(|e| e["event"] == name)
        .collect()
}

/// `net.ipv4.ip_local_port_range` of this namespace.
pub fn ephemeral_range() -> (u16, u16) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let mut it = text.split_whitespace().map(|s| s.parse::<u16>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// The ids of the BPF programs a process holds, from the `prog_id` lines of its fds' fdinfo
/// (program and link fds both name one). bpftool's own pid column needs a BPF iterator, which
/// locked-down kernels refuse.
pub fn bpf_programs_of(pid: u32) -> Vec<u64> {
    let mut ids = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for fd in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        for line in info.lines() {
            if let Some(id) = line.strip_prefix("prog_id:") {
                if let Ok(id) = id.trim().parse::<u64>() {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
        }
    }
    ids
}

/// Every BPF program loaded now, as `bpftool prog show --json` describes it.
pub fn bpf_programs() -> Vec<Value> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool");
    let progs: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs.as_array().cloned().unwrap_or_default()
}

/// All BPF program ids loaded now.
pub fn bpf_program_ids() -> Vec<u64> {
    bpf_programs()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect()
}

/// Runs `tracer ARGS` to completion and returns its JSON lines; panics unless it succeeds.
pub fn tracer_json(args: &[&str]) -> Vec<Value> {
    let out = Command::new(tracer_bin())
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run tracer");
    assert!(out.status.success(), "tracer {args:?}: {}", out.status);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("non-JSON {l:?}: {e}")))
        .collect()
}

/// A tool the test needs: present, or a failure in CI and a loud skip elsewhere.
pub fn tool(test: &str, name: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    let reason = format!("`{name}` (Debian package {package}; `cargo xtask setup` installs it)");
    if in_ci() {
        panic!("{test}: cannot run without {reason}");
    }
    eprintln!("\n!!!! SKIPPED {test}: needs {reason} !!!!\n");
    false
}

/// A network namespace made for one test (`ip netns add`), loopback up, deleted on drop even
/// when the test fails.
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    pub fn new(tag: &str) -> TestNetns {
        let ns = TestNetns {
            name: format!("tracer-{tag}-{}", std::process::id()),
        };
        ns.ip(&["netns", "add", &ns.name]);
        ns.ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let st = Command::new("ip")
            .args(args)
            .status()
            .expect("ip (iproute2)");
        assert!(st.success(), "ip {args:?}");
    }

    /// `sysctl -w KEY=VALUE` inside the namespace.
    pub fn sysctl(&self, setting: &str) {
        self.ip(&["netns", "exec", &self.name, "sysctl", "-q", "-w", setting]);
    }

    /// The namespace's inode, as tracer reports it in `netns` fields.
    pub fn inode(&self) -> u64 {
        std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(format!("/run/netns/{}", self.name)).unwrap(),
        )
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A plain HTTP/1.0 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The unprivileged user hostile steps run as (`nobody`).
pub const NOBODY: u32 = 65534;

/// `program args…` run as an unprivileged user (uid/gid 65534, no supplementary groups), as
/// any local user could run it. Programs are named by absolute path where a root-only PATH
/// shim could stand in the way (use `/usr/bin/python3`, not `python3`).
pub fn as_nobody(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        program,
    ]);
    c
}

/// The two kernel paths `watch` and `serve` take: socket hooks (the default) and syscall
/// tracepoints (`--syscalls`). Every expectation both can meet is checked on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hooks {
    Sockets,
    Syscalls,
}

impl Hooks {
    pub const BOTH: [Hooks; 2] = [Hooks::Sockets, Hooks::Syscalls];

    /// `tracer watch --json ARGS` on this path.
    pub fn watch(self, args: &[&str]) -> Tracer {
        let mut all = args.to_vec();
        if self == Hooks::Syscalls {
            all.push("--syscalls");
        }
        Tracer::watch(&all)
    }

    pub fn syscalls(self) -> bool {
        self == Hooks::Syscalls
    }

    /// The event that ends a socket's use: close(2), or (socket path) the socket's release.
    pub fn end(self) -> &'static str {
        match self {
            Hooks::Sockets => "release",
            Hooks::Syscalls => "close",
        }
    }

    /// A UDP datagram sent or received with an address: the syscall path names the call
    /// (sendto/recvfrom), the socket path the kernel's one entry for all of them.
    pub fn send(self) -> &'static str {
        match self {
            Hooks::Sockets => "sendmsg",
            Hooks::Syscalls => "sendto",
        }
    }

    pub fn recv(self) -> &'static str {
        match self {
            Hooks::Sockets => "recvmsg",
            Hooks::Syscalls => "recvfrom",
        }
    }

    /// What an event says of its fd and return value: the syscall's on that path, nothing
    /// (null, never made up) from a socket hook.
    pub fn check_call(self, e: &Value, fd: &Value, ret: i64) {
        match self {
            Hooks::Syscalls => {
                assert_eq!(&e["fd"], fd, "{e}");
                assert_eq!(e["ret"], ret, "{e}");
            }
            Hooks::Sockets => {
                assert!(e["fd"].is_null(), "a socket hook knows no fd: {e}");
                assert!(
                    e["ret"].is_null(),
                    "a socket hook knows no return value: {e}"
                );
            }
        }
    }
}

/// What `promtool check metrics` says about an exposition: empty when it passes.
pub fn promtool_problems(text: &str) -> String {
    use std::io::Write;
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        said.trim().to_string()
    } else {
        format!("promtool failed: {}", said.trim())
    }
}

/// Prometheus on loopback with a 1 s scrape interval, a temporary data dir, killed on drop.
pub struct Prometheus {
    child: Child,
    addr: String,
    /// Removed (data and config) when the Prometheus is dropped.
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(target: &str) -> Prometheus {
        // Private (mode 0700, a random name), removed on drop.
        let dir = tempfile::Builder::new()
            .prefix("tracer-prom-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: tracer\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(&p.addr, "/-/ready").is_none_or(|(s, _)| s != 200) {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// An instant query's single value (None: no series).
    pub fn value(&self, query: &str) -> Option<f64> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (_, body) = http_get(&self.addr, &format!("/api/v1/query?query={encoded}"))?;
        let v: Value = serde_json::from_str(&body).ok()?;
        assert_eq!(v["status"], "success", "{query}: {body}");
        let result = v["data"]["result"].as_array()?;
        let first = result.first()?;
        first["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A python3 program run in a network namespace (`ip netns exec`), read line by line; killed
/// on drop.
pub struct Py {
    pub child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Py {
    pub fn start(ns: &str, code: &str, args: &[&str]) -> Py {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", code])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3");
        let out = BufReader::new(child.stdout.take().unwrap());
        Py { child, out }
    }

    /// A server that prints `ready` once it listens on ADDR PORT (its two arguments).
    pub fn server(ns: &str, code: &str, addr: &str, port: u16) -> Py {
        let mut py = Py::start(ns, code, &[addr, &port.to_string()]);
        assert_eq!(py.line(), "ready", "server in {ns} did not start");
        py
    }

    /// Its next line, trimmed ("" at the end of its output).
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read helper output");
        line.trim().to_string()
    }

    pub fn pid(&self) -> u64 {
        u64::from(self.child.id())
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
