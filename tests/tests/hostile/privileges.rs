//! Hostile users: privileges. Once attached, every thread of tracer holds only what its mode
//! still needs (the table in docs/security.md) and has no-new-privs; `trace`
//! never runs a command as root by accident, and the command gets the user's groups and
//! environment and no capabilities; `--netns` accepts only a network namespace, whatever an
//! unprivileged user put at the path.
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tracer_tests::{as_nobody, prerequisites, tool, tracer_bin, tracer_json, TestNetns, Tracer};

const T: Duration = Duration::from_secs(30);

// Capability numbers (linux/capability.h).
const CAP_KILL: u32 = 5;
const CAP_SETUID: u32 = 7;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_MODULE: u32 = 16;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What each mode keeps after attaching, as docs/security.md documents it.
const WATCH: &[u32] = &[CAP_SYS_ADMIN, CAP_SYS_PTRACE];
const WATCH_NAT_ALL: &[u32] = &[CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_NET_ADMIN];
const NAT_NAMED: &[u32] = &[];
const TRACE_COMMAND: &[u32] = &[CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_KILL];

/// One thread's privileges, from `/proc/PID/task/TID/status`.
#[derive(Debug)]
struct Task {
    tid: String,
    comm: String,
    effective: u64,
    permitted: u64,
    bounding: u64,
    inheritable: u64,
    ambient: u64,
    no_new_privs: bool,
}

fn status_field(status: &str, name: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
}

fn caps_of(status: &str, name: &str) -> u64 {
    status_field(status, name)
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .unwrap_or(u64::MAX)
}

fn tasks(pid: u32) -> Vec<Task> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            Some(Task {
                tid: t.file_name().to_string_lossy().into_owned(),
                comm: status_field(&status, "Name:").unwrap_or_default(),
                effective: caps_of(&status, "CapEff:"),
                permitted: caps_of(&status, "CapPrm:"),
                bounding: caps_of(&status, "CapBnd:"),
                inheritable: caps_of(&status, "CapInh:"),
                ambient: caps_of(&status, "CapAmb:"),
                no_new_privs: status_field(&status, "NoNewPrivs:").as_deref() == Some("1"),
            })
        })
        .collect()
}

/// The threads of `pid` once at least `min_threads` exist and every one has no-new-privs
/// (set by the drop); after `T` the last view, for the assertions to explain.
fn settled(pid: u32, min_threads: usize) -> Vec<Task> {
    let deadline = Instant::now() + T;
    loop {
        let now = tasks(pid);
        let done = now.len() >= min_threads && now.iter().all(|t| t.no_new_privs);
        if done || Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, c| m | 1 << c)
}

/// Every thread: effective and permitted within `keep`, nothing inheritable or ambient, an
/// empty bounding set (so none of BPF, PERFMON, NET_ADMIN, SYS_MODULE, SETUID), no-new-privs.
fn assert_keeps_only(mode: &str, tasks: &[Task], keep: &[u32]) {
    assert!(!tasks.is_empty(), "{mode}: no threads (tracer exited?)");
    let allowed = mask(keep);
    let forbidden = mask(&[
        CAP_BPF,
        CAP_PERFMON,
        CAP_NET_ADMIN,
        CAP_SYS_MODULE,
        CAP_SETUID,
    ]);
    for t in tasks {
        let what = format!("{mode}: thread {} ({}): {t:?}", t.tid, t.comm);
        assert!(t.no_new_privs, "{what}: no no-new-privs");
        assert_eq!(
            t.effective & !allowed,
            0,
            "{what}: effective beyond {keep:?}"
        );
        assert_eq!(
            t.permitted & !allowed,
            0,
            "{what}: permitted beyond {keep:?}"
        );
        assert_eq!(
            t.inheritable | t.ambient,
            0,
            "{what}: inheritable or ambient"
        );
        assert_eq!(t.bounding & forbidden, 0, "{what}: bounding set");
        assert_eq!(t.bounding, 0, "{what}: bounding set not emptied");
    }
}

/// Stops a child on drop (SIGTERM, then waits), even when an assertion fails.
struct Stop(Child);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
}

/// Number of conntrack reader threads (one per watched namespace).
fn readers(pid: u32) -> usize {
    tasks(pid)
        .iter()
        .filter(|t| t.comm.starts_with("conntrack-"))
        .count()
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + T;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `watch`: the main thread and any helper keep SYS_ADMIN and SYS_PTRACE only, also after
/// an unprivileged user made a namespace with a socket in it that tracer follows.
#[test]
fn watch_threads_keep_only_their_capabilities() {
    if !prerequisites("watch_threads_keep_only_their_capabilities")
        || !tool(
            "watch_threads_keep_only_their_capabilities",
            "unshare",
            "util-linux",
        )
    {
        return;
    }
    let tracer = Tracer::watch(&[]);
    let pid = tracer.pid();
    assert_keeps_only("watch", &settled(pid, 1), WATCH);
    // A user's own namespace, with a socket: tracer enters it for its port range.
    let st = as_nobody("/usr/bin/unshare")
        .args(["-rn", "/usr/bin/python3", "-c"])
        .arg("import socket,time; s=socket.socket(); s.bind(('127.0.0.1',0)); time.sleep(0.5)")
        .status()
        .unwrap();
    assert!(st.success(), "unshare -rn as nobody");
    std::thread::sleep(Duration::from_millis(500));
    assert_keeps_only("watch", &settled(pid, 1), WATCH);
}

/// `serve`: the metrics endpoint is on loopback by default, bound before anything is
/// attached; afterwards every thread (the endpoint's included) keeps SYS_ADMIN and
/// SYS_PTRACE only. (Was `security_defaults` in reliability.rs.)
#[test]
fn serve_defaults_to_loopback_and_keeps_only_its_capabilities() {
    if !prerequisites("serve_defaults_to_loopback_and_keeps_only_its_capabilities") {
        return;
    }
    let serve = Command::new(tracer_bin())
        .arg("serve")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = serve.id();
    let mut serve = Stop(serve);
    wait_until("serve on 127.0.0.1:9464", || {
        std::net::TcpStream::connect("127.0.0.1:9464").is_ok()
    });
    let rows = tracer_json(&["ports", "--json", "--pid", &pid.to_string(), "--listening"]);
    let listening: Vec<(String, u64)> = rows
        .iter()
        .filter(|r| r["type"] == "socket")
        .map(|r| {
            (
                r["laddr"].as_str().unwrap().into(),
                r["lport"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(listening, vec![("127.0.0.1".to_string(), 9464)]);
    assert_keeps_only("serve", &settled(pid, 1), WATCH);
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(serve.0.wait().unwrap().success());
}

/// `nat --netns NAME`: the namespaces are fixed at start, so nothing is kept at all — on the
/// main thread and on the conntrack reader started before the drop.
#[test]
fn nat_in_a_named_netns_keeps_nothing() {
    if !prerequisites("nat_in_a_named_netns_keeps_nothing")
        || !tool("nat_in_a_named_netns_keeps_nothing", "ip", "iproute2")
    {
        return;
    }
    let ns = TestNetns::new("caps");
    let tracer = Tracer::start("nat", &["--netns", &ns.name]);
    let pid = tracer.pid();
    wait_until("the conntrack reader", || readers(pid) >= 1);
    assert_keeps_only("nat --netns", &settled(pid, 2), NAT_NAMED);
}

/// `--all-netns` / `--nat-all-netns`: namespaces created later are followed, so SYS_ADMIN
/// (setns), SYS_PTRACE (their /proc entries) and NET_ADMIN (conntrack events there) stay on
/// the main thread; every reader, old and new, holds nothing.
fn all_netns_mode(mode: &str, args: &[&str]) {
    let subcommand = args[0];
    let tracer = Tracer::start(subcommand, &args[1..]);
    let pid = tracer.pid();
    wait_until("the first conntrack reader", || readers(pid) >= 1);
    let before = readers(pid);
    assert_keeps_only(mode, &settled(pid, before + 1), WATCH_NAT_ALL);
    let _later = TestNetns::new("capslater");
    wait_until("a reader in the namespace made later", || {
        readers(pid) > before
    });
    assert_keeps_only(mode, &settled(pid, before + 2), WATCH_NAT_ALL);
}

#[test]
fn all_netns_modes_keep_only_their_capabilities() {
    if !prerequisites("all_netns_modes_keep_only_their_capabilities")
        || !tool(
            "all_netns_modes_keep_only_their_capabilities",
            "ip",
            "iproute2",
        )
    {
        return;
    }
    all_netns_mode("watch --nat-all-netns", &["watch", "--nat-all-netns"]);
    all_netns_mode("nat --all-netns", &["nat", "--all-netns"]);
}

/// `trace --user nobody -- CMD`: tracer's threads keep SYS_ADMIN, SYS_PTRACE and KILL; the
/// command runs as nobody with no capabilities at all; and SIGTERM to tracer still reaches
/// the command (KILL is what lets it signal another user's process).
#[test]
fn trace_keeps_only_its_capabilities_and_the_command_has_none() {
    if !prerequisites("trace_keeps_only_its_capabilities_and_the_command_has_none") {
        return;
    }
    let mut child = Command::new(tracer_bin())
        .args(["trace", "--json", "--user", "nobody", "--"])
        .args([
            "sh",
            "-c",
            "cat /proc/self/status >&2; echo started >&2; exec sleep 60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, lines) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut child = Stop(child);
    let mut status = String::new();
    while !status.contains("started") {
        match lines.recv_timeout(T) {
            Ok(line) => status.push_str(&(line + "\n")),
            Err(_) => panic!("the command never started: {status}"),
        }
    }
    assert_eq!(
        status_field(&status, "Uid:")
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["65534"; 4]
    );
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(caps_of(&status, set), 0, "the command's {set}\n{status}");
    }
    // The waiter thread exists once the command runs: tracer, its waiter, nothing more kept.
    assert_keeps_only("trace", &settled(pid, 2), TRACE_COMMAND);
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let code = child.0.wait().unwrap().code();
    assert_eq!(
        code,
        Some(128 + libc::SIGTERM),
        "the command was killed by SIGTERM"
    );
}

/// `tracer trace -- CMD` with `env`, returning (exit code, stdout, stderr).
fn trace_env(args: &[&str], env: &[(&str, &str)], remove: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(tracer_bin());
    c.arg("trace").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    for k in remove {
        c.env_remove(k);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Without SUDO_UID or `--user`, and with SUDO_UID=0, the command is not run at all: a clear
/// message says to pass `--user USER` (or `--user root`).
#[test]
fn trace_refuses_to_run_a_command_as_root_by_accident() {
    if !prerequisites("trace_refuses_to_run_a_command_as_root_by_accident") {
        return;
    }
    let cmd = ["--", "sh", "-c", "echo the-command-ran"];
    for (env, remove) in [
        (vec![], vec!["SUDO_UID", "SUDO_GID"]),
        (vec![("SUDO_UID", "0"), ("SUDO_GID", "0")], vec![]),
    ] {
        let (code, out, err) = trace_env(&cmd, &env, &remove);
        assert_eq!(code, 1, "{env:?}: {err}");
        assert!(!out.contains("the-command-ran"), "{env:?}: it ran: {out}");
        assert!(
            err.contains("refusing to run `sh -c echo the-command-ran` as root")
                && err.contains("--user USER")
                && err.contains("--user root"),
            "{env:?}: {err}"
        );
    }
    // Asked for by name, root it is.
    let (code, out, err) = trace_env(&["--user", "root", "--", "id", "-u"], &[], &["SUDO_UID"]);
    assert_eq!((code, out.trim()), (0, "0"), "{err}");
}

/// The user database entry of `name`: (uid, gid, home, shell), from getent.
fn passwd(name: &str) -> (String, String, String, String) {
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let f: Vec<&str> = line.trim().split(':').collect();
    (f[2].into(), f[3].into(), f[5].into(), f[6].into())
}

/// A user with supplementary groups if this machine has one (so initgroups is what is
/// checked), else `nobody`.
fn user_with_groups() -> String {
    let out = Command::new("getent").arg("group").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit(':').next())
        .flat_map(|members| members.split(','))
        .find(|m| !m.is_empty() && m != &"root" && !passwd_missing(m))
        .map(str::to_string)
        .unwrap_or_else(|| "nobody".into())
}

fn passwd_missing(name: &str) -> bool {
    !Command::new("getent")
        .args(["passwd", name])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Through sudo (SUDO_UID), the command runs as that user: its uid and primary group, the
/// supplementary groups the user database gives it (initgroups), HOME, USER, LOGNAME and
/// SHELL from its passwd entry, none of root's other variables, and no capabilities.
#[test]
fn trace_runs_the_command_as_the_sudo_user_with_their_groups_and_environment() {
    if !prerequisites("trace_runs_the_command_as_the_sudo_user_with_their_groups_and_environment") {
        return;
    }
    let name = user_with_groups();
    let (uid, gid, home, shell) = passwd(&name);
    let script = "cat /proc/self/status; echo; env";
    let (code, out, err) = trace_env(
        &["--", "sh", "-c", script],
        &[
            ("SUDO_UID", &uid),
            ("SUDO_GID", &gid),
            ("HOME", "/root"),
            ("TRACER_TEST_ROOTS_OWN", "secret"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let field = |f: &str| status_field(&out, f).unwrap_or_default();
    let ids = |v: String| v.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(ids(field("Uid:")), vec![uid.clone(); 4], "{out}");
    assert_eq!(ids(field("Gid:")), vec![gid.clone(); 4], "{out}");
    let expected = Command::new("id").args(["-G", &name]).output().unwrap();
    let mut expected = ids(String::from_utf8(expected.stdout).unwrap());
    let mut groups = ids(field("Groups:"));
    expected.sort();
    groups.sort();
    assert_eq!(groups, expected, "{name}'s groups (id -G {name})");
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(caps_of(&out, set), 0, "the command's {set}");
    }
    let env: Vec<&str> = out.lines().filter(|l| l.contains('=')).collect();
    for expected in [
        format!("HOME={home}"),
        format!("USER={name}"),
        format!("LOGNAME={name}"),
        format!("SHELL={shell}"),
    ] {
        assert!(env.contains(&expected.as_str()), "{expected} in {env:?}");
    }
    assert!(env.iter().any(|l| l.starts_with("PATH=")), "{env:?}");
    assert!(
        !out.contains("TRACER_TEST_ROOTS_OWN"),
        "root's variables: {env:?}"
    );
}

/// Runs `tracer ARGS` expecting a refusal: exit 1 within seconds (a FIFO must not hang it;
/// `timeout` says 124 if it does) and `expected` in the message.
fn refused(args: &[&str], expected: &str) {
    let out = Command::new("timeout")
        .arg("10")
        .arg(tracer_bin())
        .args(args)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(124), "tracer {args:?} hung");
    assert_eq!(out.status.code(), Some(1), "tracer {args:?}: {err}");
    assert!(err.contains(expected), "tracer {args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Removes a file under /run/netns on drop.
struct Planted(std::path::PathBuf);

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `--netns` (and `--nat-netns`) take only a network namespace: /etc/passwd, a FIFO an
/// unprivileged user made, a directory, a mount namespace and a regular file planted under
/// /run/netns (a name) are each refused with a clear message, without hanging; a real named
/// namespace is accepted.
#[test]
fn netns_options_accept_only_network_namespaces() {
    if !prerequisites("netns_options_accept_only_network_namespaces")
        || !tool(
            "netns_options_accept_only_network_namespaces",
            "ip",
            "iproute2",
        )
    {
        return;
    }
    // A directory the hostile user can write to, and their FIFO in it.
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        shared.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let fifo = shared.path().join("ns");
    let st = as_nobody("/usr/bin/mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success(), "mkfifo as nobody");
    let fifo = fifo.to_str().unwrap().to_string();
    std::fs::create_dir_all("/run/netns").unwrap();
    let planted = Planted(format!("/run/netns/tracer-notns-{}", std::process::id()).into());
    std::fs::write(&planted.0, "not a namespace").unwrap();
    let planted_name = planted.0.file_name().unwrap().to_str().unwrap().to_string();
    let dir = shared.path().to_str().unwrap().to_string();
    let cases = [
        ("/etc/passwd", "a regular file, not a network namespace"),
        (fifo.as_str(), "a FIFO, not a network namespace"),
        (dir.as_str(), "a directory, not a network namespace"),
        (
            "/proc/self/ns/mnt",
            "a mount namespace, not a network namespace",
        ),
        (
            planted_name.as_str(),
            "a regular file, not a network namespace",
        ),
    ];
    for (spec, expected) in cases {
        refused(&["ports", "--netns", spec], expected);
        refused(&["watch", "--netns", spec, "--duration", "1"], expected);
        refused(&["nat", "--netns", spec, "--duration", "1"], expected);
        refused(&["watch", "--nat-netns", spec, "--duration", "1"], expected);
    }
    let ns = TestNetns::new("isnetns");
    let rows = tracer_json(&["ports", "--json", "--netns", &ns.name]);
    assert!(
        rows.iter()
            .any(|r| r["type"] == "ephemeral_range" && r["netns"] == ns.inode()),
        "the named namespace's range: {rows:?}"
    );
}
