//! Containers against a real Docker Engine (Debian's docker.io): a busybox httpd container
//! behind a published port, named by tracer from its cgroup (the kernel's cgroup id in each
//! record) and from Docker's API. The test starts dockerd itself, on a documentation-range
//! bridge (198.51.100.1/24; Docker's default 172.17.0.0/16 must not be used on these
//! machines), with an image made locally from busybox-static (nothing is pulled), and stops it
//! afterwards, removing its bridge and its iptables chains. `cargo xtask test` runs this file
//! after every other one, so the other suites never see a Docker daemon.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracer_tests::*;

const T: Duration = Duration::from_secs(30);
const IMAGE: &str = "tracer-e2e-busybox:1";
const BRIDGE_IP: &str = "198.51.100.1/24";

fn ready(test: &str) -> bool {
    prerequisites(test)
        && tool(test, "dockerd", "docker.io")
        && tool(test, "docker", "docker.io")
        && tool(test, "busybox", "busybox-static")
        && tool(test, "curl", "curl")
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("docker");
    assert!(out.status.success(), "docker {args:?}: {}", out.status);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A Docker daemon for the test: the one already answering, or one started here (and stopped,
/// with its bridge and iptables chains, on drop).
struct Daemon {
    started: Option<Child>,
    /// What dockerd changes on the host, as it was: the FORWARD policy and ip_forward.
    forward_policy: String,
    ip_forward: String,
}

fn answering() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Daemon {
    fn up() -> Daemon {
        if answering() {
            return Daemon {
                started: None,
                forward_policy: String::new(),
                ip_forward: String::new(),
            };
        }
        let shell = |cmd: &str| {
            let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        // `-P FORWARD ACCEPT` → ACCEPT.
        let forward_policy = shell("iptables -S FORWARD 2>/dev/null | head -1")
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        let ip_forward = shell("sysctl -n net.ipv4.ip_forward");
        // Its log (and containerd's, which ignores --log-level) in a file, not the test's
        // output: shown only when the daemon does not come up.
        let log = std::env::temp_dir().join(format!("tracer-dockerd-{}.log", std::process::id()));
        let child = Command::new("dockerd")
            .args(["--bip", BRIDGE_IP, "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("start dockerd");
        let daemon = Daemon {
            started: Some(child),
            forward_policy,
            ip_forward,
        };
        let deadline = Instant::now() + T;
        while !answering() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer in {T:?}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        daemon
    }

    /// The busybox image, made from busybox-static (no registry).
    fn image(&self) {
        // Made again when an older run left one without its default command.
        let made = !docker(&["images", "-q", IMAGE]).is_empty()
            && docker(&["image", "inspect", "-f", "{{json .Config.Cmd}}", IMAGE]) != "null";
        if !made {
            let dir = tempfile_dir();
            let busybox = String::from_utf8(
                Command::new("sh")
                    .args(["-c", "command -v busybox"])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .unwrap();
            let root = format!("{dir}/root");
            for sub in ["bin", "www"] {
                std::fs::create_dir_all(format!("{root}/{sub}")).unwrap();
            }
            std::fs::copy(busybox.trim(), format!("{root}/bin/busybox")).unwrap();
            for applet in ["sh", "httpd", "wget", "nc", "sleep"] {
                std::os::unix::fs::symlink("busybox", format!("{root}/bin/{applet}")).unwrap();
            }
            std::fs::write(format!("{root}/www/index.html"), "hello from a container\n").unwrap();
            let st = Command::new("sh")
                .args([
                    "-c",
                    // A default command: a CRI pod's sandbox (its "pause") runs it.
                    &format!(
                        "tar -C {root} -c . | docker import --change 'CMD [\"/bin/sleep\", \"1000000\"]' - {IMAGE}"
                    ),
                ])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "docker import");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

fn tempfile_dir() -> String {
    let dir = std::env::temp_dir().join(format!("tracer-docker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.display().to_string()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(child) = self.started.as_mut() else {
            return;
        };
        let _ = Command::new("sh")
            .args(["-c", "docker rm -f $(docker ps -aq) >/dev/null 2>&1"])
            .status();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
        // What dockerd leaves behind: its bridge, its iptables chains (piped, no file in the
        // shared /tmp), the FORWARD policy it set to DROP and ip_forward it turned on.
        let _ = Command::new("ip").args(["link", "del", "docker0"]).status();
        let _ = Command::new("sh")
            .args([
                "-c",
                "for t in nat filter; do iptables-save -t $t | grep -v -e 'DOCKER' -e 'docker0' | iptables-restore -T $t; done",
            ])
            .status();
        if matches!(self.forward_policy.as_str(), "ACCEPT" | "DROP") {
            let _ = Command::new("iptables")
                .args(["-P", "FORWARD", &self.forward_policy])
                .status();
        }
        if matches!(self.ip_forward.as_str(), "0" | "1") {
            let _ = Command::new("sysctl")
                .args([
                    "-q",
                    "-w",
                    &format!("net.ipv4.ip_forward={}", self.ip_forward),
                ])
                .status();
        }
    }
}

/// A container running busybox httpd with port 80 published on `host_port`; removed on drop.
struct Web {
    name: String,
    id: String,
}

impl Web {
    fn run(tag: &str, host_port: u16) -> Web {
        let name = format!("tracer-{tag}-{}", std::process::id());
        let id = docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "-p",
            &format!("{host_port}:80"),
            IMAGE,
            "/bin/httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ]);
        Web { name, id }
    }

    fn ip(&self) -> String {
        docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &self.id,
        ])
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.id])
            .stdout(Stdio::null())
            .status();
    }
}

fn curl(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A filtered watch (`--container`, `--pod`) showed an accept, and every event it showed has
/// `field` = `want`. Then, with the host's cgroup judged by now, 2,000 UDP round trips on the
/// host (all in their caller's context): the kernel drops them before the ring, so the records
/// the agent read stay far below what they would have been (about 4 per round trip).
fn only_these(mut filtered: Tracer, field: &str, want: &str) {
    filtered.wait_for("the selected accept", T, |evs| {
        evs.iter()
            .any(|e| e["type"] == "event" && e["event"] == "accept")
    });
    let st = Command::new(sockdriver_bin().with_file_name("loadgen"))
        .args(["udp", "1", "1", "2000"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "loadgen");
    let (_, shown) = filtered.stop_with(libc::SIGINT);
    let read = shown
        .iter()
        .find(|r| r["type"] == "summary")
        .and_then(|s| s["events"].as_u64())
        .expect("a summary");
    assert!(
        read < 1000,
        "{read} records read: the host's UDP calls were not dropped in the kernel"
    );
    let events: Vec<&Value> = shown.iter().filter(|e| e["type"] == "event").collect();
    assert!(!events.is_empty());
    for e in &events {
        assert_eq!(e[field], want, "{e}");
    }
}

fn containers_of<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == "event" && e["container_name"] == name)
        .collect()
}

#[test]
fn a_container_is_named_in_watch_ports_and_the_filter() {
    if !ready("a_container_is_named_in_watch_ports_and_the_filter") {
        return;
    }
    let daemon = Daemon::up();
    daemon.image();
    let mut all = Tracer::watch(&["--proto", "tcp"]);
    let host_port = free_port();
    let web = Web::run("web", host_port);
    let only = Tracer::watch(&["--container", &web.name]);
    let ip = web.ip();
    assert!(!ip.is_empty(), "the container has an address");
    // The container answers on its own address (from the host: a plain connection).
    let deadline = Instant::now() + T;
    while !curl(&format!("http://{ip}:80/")).contains("hello from a container") {
        assert!(
            Instant::now() < deadline,
            "httpd in the container never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    all.wait_for("httpd's listen and accept, named", T, |evs| {
        let named = containers_of(evs, &web.name);
        named.iter().any(|e| e["event"] == "listen") && named.iter().any(|e| e["event"] == "accept")
    });
    let named = containers_of(&all.events, &web.name);
    for e in &named {
        assert_eq!(e["container_id"], web.id.as_str(), "{e}");
        assert_eq!(e["container_runtime"], "docker", "{e}");
        assert_eq!(e["comm"], "httpd", "only httpd runs in the container: {e}");
    }
    let listen = named.iter().find(|e| e["event"] == "listen").unwrap();
    assert_eq!(listen["lport"], 80);
    // curl runs on the host: named so, never blank.
    let curl_events: Vec<&Value> = all
        .events
        .iter()
        .filter(|e| e["type"] == "event" && e["comm"] == "curl")
        .collect();
    assert!(!curl_events.is_empty(), "curl's connect was seen");
    for e in &curl_events {
        assert_eq!(e["container_name"], "host", "{e}");
        assert_eq!(e["container_id"], Value::Null, "{e}");
    }

    // --container NAME: the container's events, nothing of the host's.
    only_these(only, "container_name", &web.name);
    // From the host itself, 127.0.0.1:HOSTPORT goes through Docker's userland proxy: its
    // two sockets are one proxied connection, in the event stream and by remote endpoint.
    let groups = Tracer::watch(&["--proto", "tcp", "--group-by", "remote"]);
    // It learns the published ports once a second.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(curl(&format!("http://127.0.0.1:{host_port}/")).contains("hello from a container"));
    all.wait_for("the proxied connection", T, |evs| {
        evs.iter()
            .any(|e| e["type"] == "proxied" && e["container"] == web.name.as_str())
    });
    let p = all
        .events
        .iter()
        .find(|e| e["type"] == "proxied")
        .unwrap()
        .clone();
    assert_eq!(p["proxy_comm"], "docker-proxy", "{p}");
    assert_eq!(p["front"], format!("127.0.0.1:{host_port}"), "{p}");
    assert_eq!(p["target"], format!("{ip}:80"), "{p}");
    let client = p["client"].as_str().unwrap().to_string();
    // The client is curl's own socket: its connect to the published port.
    assert!(
        all.events.iter().any(|e| e["event"] == "connect"
            && e["comm"] == "curl"
            && e["rport"] == host_port
            && format!("127.0.0.1:{}", e["lport"]) == client),
        "{client} is curl's"
    );
    let (_, grouped) = groups.stop_with(libc::SIGINT);
    let target = grouped
        .iter()
        .filter(|r| r["type"] == "remote")
        .find(|r| r["raddr"] == ip.as_str() && r["rport"] == 80)
        .unwrap_or_else(|| panic!("no group for the container: {grouped:?}"));
    assert!(
        target["locals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["comm"] == "docker-proxy" && l["proxied_for"] == client.as_str()),
        "{target}"
    );
    let (_, _) = all.stop_with(libc::SIGINT);

    // ports: the listener inside the container's namespace, with the container's name.
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &web.id]);
    let rows = tracer_json(&["ports", "--json", "--netns", &format!("/proc/{pid}/ns/net")]);
    let listener = rows
        .iter()
        .find(|r| r["type"] == "socket" && r["lport"] == 80 && r["listening"] == true)
        .unwrap_or_else(|| panic!("no listener on 80 in the container: {rows:?}"));
    assert_eq!(listener["container_name"], web.name.as_str(), "{listener}");
    assert_eq!(listener["container_id"], web.id.as_str(), "{listener}");
    drop(web);
    drop(daemon);
}

/// A namespace joined to the host by a veth pair: the client at 203.0.113.2, the host at
/// 203.0.113.1 (a documentation range), gone with the namespace.
struct Outside {
    ns: TestNetns,
    host_dev: String,
}

impl Outside {
    fn up(tag: &str) -> Outside {
        // The host's own side of the wire is in the root namespace: never an address the
        // machine already uses (its uplink here is in 192.0.2.0/24, gateway .1).
        let addrs = Command::new("ip")
            .args(["-4", "addr"])
            .output()
            .expect("ip");
        assert!(
            !String::from_utf8_lossy(&addrs.stdout).contains("203.0.113."),
            "203.0.113.0/24 is already in use on this host: the test would disturb it"
        );
        let ns = TestNetns::new(tag);
        let host_dev = format!("{tag}{}h", std::process::id() % 100_000);
        let run = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("ip");
            assert!(st.success(), "ip {args:?}");
        };
        run(&[
            "link", "add", &host_dev, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        run(&["addr", "add", "203.0.113.1/24", "dev", &host_dev]);
        run(&["link", "set", &host_dev, "up"]);
        run(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            "203.0.113.2/24",
            "dev",
            "eth0",
        ]);
        run(&["-n", &ns.name, "link", "set", "eth0", "up"]);
        run(&[
            "-n",
            &ns.name,
            "route",
            "add",
            "default",
            "via",
            "203.0.113.1",
        ]);
        Outside { ns, host_dev }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_dev])
            .status();
    }
}

/// A client outside the host connects to the published port: `nat` shows Docker's DNAT
/// binding, the flow names the client's process and ephemeral port and the container's
/// httpd as the server; `ports --mappings` shows the published port end to end.
#[test]
fn a_published_port_is_one_flow_from_client_to_container() {
    if !ready("a_published_port_is_one_flow_from_client_to_container") {
        return;
    }
    let daemon = Daemon::up();
    daemon.image();
    let host_port = free_port();
    let web = Web::run("pub", host_port);
    let outside = Outside::up("dkc");
    let mut nat = Tracer::start("nat", &[]);
    let url = format!("http://203.0.113.1:{host_port}/");
    let deadline = Instant::now() + T;
    loop {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &outside.ns.name,
                "curl",
                "-s",
                "--max-time",
                "3",
                &url,
            ])
            .output()
            .expect("curl in the namespace");
        if String::from_utf8_lossy(&out.stdout).contains("hello from a container") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the published port never answered from outside"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    nat.wait_for("the stitched flow to the container", T, |r| {
        r.iter().any(|f| {
            f["type"] == "flow" && f["client"]["addr"] == "203.0.113.2" && f["server"]["port"] == 80
        })
    });
    let flow = nat
        .events
        .iter()
        .find(|f| f["type"] == "flow" && f["client"]["addr"] == "203.0.113.2")
        .unwrap()
        .clone();
    assert_eq!(flow["client"]["comm"], "curl", "{flow}");
    assert_eq!(flow["client"]["container"], "host", "{flow}");
    assert_eq!(flow["client"]["kernel_chose_port"], true, "{flow}");
    assert_eq!(flow["nat"]["kind"], "dnat", "{flow}");
    assert_eq!(flow["nat"]["original"]["dport"], host_port, "{flow}");
    assert_eq!(flow["nat"]["translated"]["dst"], web.ip(), "{flow}");
    assert_eq!(flow["server"]["comm"], "httpd", "{flow}");
    assert_eq!(flow["server"]["container"], web.name.as_str(), "{flow}");
    assert_eq!(
        flow["server"]["peer_port"], flow["client"]["port"],
        "{flow}"
    );
    drop(nat);

    // The mapping as the host sees it, end to end.
    let mappings = tracer_json(&["ports", "--mappings", "--json"]);
    let m = mappings
        .iter()
        .find(|m| m["host_port"] == host_port && m["host_addr"] == "0.0.0.0")
        .unwrap_or_else(|| panic!("no mapping for {host_port}: {mappings:?}"));
    assert_eq!(m["rule"], "DOCKER", "{m}");
    assert_eq!(m["target_addr"], web.ip(), "{m}");
    assert_eq!(m["target_port"], 80, "{m}");
    assert_eq!(m["container"], web.name.as_str(), "{m}");
    assert_eq!(m["container_id"], web.id.as_str(), "{m}");
    assert_eq!(m["comm"], "httpd", "{m}");
    assert_eq!(m["proxy_comm"], "docker-proxy", "{m}");
    drop(outside);
    drop(web);
    drop(daemon);
}

/// A child stopped (SIGTERM, then waited for) on drop, even when the test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Directories removed in order on drop (cgroups: empty once their processes are gone).
struct RemoveDirs(Vec<String>);

impl Drop for RemoveDirs {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The unified cgroup hierarchy's mount point, from mountinfo.
fn cgroup2_root() -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right
                .starts_with("cgroup2 ")
                .then(|| left.split(' ').nth(4).map(str::to_string))?
        })
        .expect("cgroup v2 mounted")
}

/// Hostile: a user given a cgroup subtree of their own (as systemd delegates one) names a
/// cgroup in it like the real container's (`docker-<its id>.scope`, the id read from the
/// container's /proc/PID/cgroup, which anyone may read) and connects from it. tracer must not
/// take it for the container: no id, no runtime, never its name, never selected by
/// `--container`; shown as `user:…`.
#[test]
fn a_users_cgroup_named_like_a_container_is_not_that_container() {
    if !ready("a_users_cgroup_named_like_a_container_is_not_that_container")
        || !tool("a_users_cgroup…", "setpriv", "util-linux")
    {
        return;
    }
    let daemon = Daemon::up();
    daemon.image();
    let web = Web::run("real", free_port());
    let ip = web.ip();
    // The delegation, as root: a directory of the user's own in the unified hierarchy.
    let delegated = format!("{}/tracer-user-{}", cgroup2_root(), std::process::id());
    std::fs::create_dir(&delegated).unwrap();
    let fake = format!("{delegated}/docker-{}.scope", web.id);
    let _gone = RemoveDirs(vec![fake.clone(), delegated.clone()]);
    for f in [
        "",
        "/cgroup.procs",
        "/cgroup.threads",
        "/cgroup.subtree_control",
    ] {
        let st = Command::new("chown")
            .args(["65534:65534", &format!("{delegated}{f}")])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let mut all = Tracer::watch(&["--proto", "tcp"]);
    let mut only = Tracer::watch(&["--container", &web.id[..12]]);
    // The user's process waits for its line, then moves itself into a cgroup named like the
    // container's and connects.
    let script = format!(
        "read go; mkdir {fake} && echo $$ > {fake}/cgroup.procs && exec curl -s -o /dev/null --max-time 3 http://{ip}:80/"
    );
    let mut user = as_nobody("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn the user's shell");
    std::fs::write(format!("{delegated}/cgroup.procs"), user.id().to_string()).unwrap();
    use std::io::Write as _;
    user.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let status = user.wait().unwrap();
    assert!(status.success(), "the user's curl: {status}");
    all.wait_for("the user's connect", T, |evs| {
        evs.iter()
            .any(|e| e["type"] == "event" && e["event"] == "connect" && e["uid"] == 65534)
    });
    let theirs: Vec<&Value> = all
        .events
        .iter()
        .filter(|e| e["type"] == "event" && e["uid"] == 65534)
        .collect();
    for e in &theirs {
        assert_eq!(e["container_id"], Value::Null, "{e}");
        assert_eq!(e["container_runtime"], Value::Null, "{e}");
        assert_ne!(e["container_name"], web.name.as_str(), "{e}");
        assert_eq!(e["container_name"], format!("user:{}", &web.id[..7]), "{e}");
    }
    // The real container's accept is still its own.
    all.wait_for("httpd's accept", T, |evs| {
        evs.iter()
            .any(|e| e["event"] == "accept" && e["container_name"] == web.name.as_str())
    });
    only.wait_for("the container's accept", T, |evs| {
        evs.iter().any(|e| e["event"] == "accept")
    });
    let (_, shown) = only.stop_with(libc::SIGINT);
    assert!(
        !shown
            .iter()
            .any(|e| e["type"] == "event" && e["uid"] == 65534),
        "--container selected the user's process"
    );
    drop(all);
    drop(web);
    drop(daemon);
}

/// `serve` labels what a process label would: the container's listening port, and a connect
/// refused from inside the container counted under its name; the exposition is clean.
#[test]
fn serve_labels_listeners_and_failed_connects_by_container() {
    if !ready("serve_labels_listeners_and_failed_connects_by_container")
        || !tool("serve_labels…", "promtool", "prometheus")
    {
        return;
    }
    let daemon = Daemon::up();
    daemon.image();
    let addr = format!("127.0.0.1:{}", free_port());
    let serve = Command::new(tracer_bin())
        .args(["serve", "--listen", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn tracer serve");
    let serve = Killed(serve);
    let scrape = || {
        http_get(&addr, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    let deadline = Instant::now() + T;
    while http_get(&addr, "/healthz").is_none() {
        assert!(Instant::now() < deadline, "serve did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let web = Web::run("metrics", free_port());
    // A connect refused inside the container (nothing listens on its port 81), twice.
    for _ in 0..2 {
        let _ = Command::new("docker")
            // busybox's nc (its static wget crashes before connecting here).
            .args(["exec", &web.id, "nc", "127.0.0.1", "81"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    // A connection held from inside the container: its kernel-chosen port is the container's.
    let _ = Command::new("docker")
        .args([
            "exec",
            "-d",
            &web.id,
            "sh",
            "-c",
            "sleep 60 | nc 127.0.0.1 80",
        ])
        .status();
    let listen = format!(
        "tracer_listen_port_info{{comm=\"httpd\",container=\"{}\",port=\"80\",proto=\"tcp\"}} 1",
        web.name
    );
    let ephemeral = format!(
        "tracer_container_ephemeral_ports_in_use{{container=\"{}\",proto=\"tcp\"}} 1",
        web.name
    );
    let refused = format!(
        "tracer_container_connect_errors_total{{container=\"{}\",errno=\"ECONNREFUSED\"}} 2",
        web.name
    );
    let deadline = Instant::now() + T;
    loop {
        let text = scrape();
        if text.contains(&listen) && text.contains(&refused) && text.contains(&ephemeral) {
            assert_eq!(promtool_problems(&text), "", "promtool check metrics");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no {listen}, {refused} and {ephemeral} in:\n{}",
            text.lines()
                .filter(|l| l.contains("container"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(serve);
    drop(web);
    drop(daemon);
}

/// A containerd with its CRI plugin on, in a directory of its own (root, state, socket), as a
/// Kubernetes node runs it (cgroupfs driver): the test's pods are made through it, tracer
/// lists them. Stopped, its mounts and its directory removed, on drop.
struct Containerd {
    child: Child,
    dir: std::path::PathBuf,
    socket: std::path::PathBuf,
}

/// The image as containerd's CRI plugin names it once imported from Docker.
const CRI_IMAGE: &str = "docker.io/library/tracer-e2e-busybox:1";

impl Containerd {
    fn up() -> Containerd {
        // Under /run: root's own, never a shared directory another user could plant in.
        let dir = std::path::PathBuf::from(format!("/run/tracer-cri-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{s}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{CRI_IMAGE}"
  # root here lacks CAP_SYS_RESOURCE: no oom_score_adj below containerd's own (the
  # sandbox asks for -998), as for a rootless containerd.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni-conf"
"#,
            d = dir.display(),
            s = socket.display()
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new("containerd")
            .args(["--config", &dir.join("config.toml").display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start containerd");
        let containerd = Containerd { child, dir, socket };
        let deadline = Instant::now() + T;
        while !containerd.ctr(&["version"]).0 {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer in {T:?}: {}",
                containerd.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The image Docker made, into the namespace the CRI plugin uses (nothing pulled).
        let st = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "docker save {IMAGE} | ctr --address {} -n k8s.io images import -",
                    containerd.socket.display()
                ),
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "ctr images import");
        containerd
    }

    /// The last lines of its log (for a failure's message).
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn ctr(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("ctr");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        // At most 10 s for a clean stop, then no more waiting.
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Whatever it left mounted below its directory (a sandbox's shm, a rootfs), deepest
        // first, then the directory.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = self.dir.display().to_string();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", p]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An environment variable the tracers a test starts see, removed on drop (even when the test
/// fails: the next test must not inherit it).
struct EnvGuard(&'static str);

impl EnvGuard {
    fn set(name: &'static str, value: &str) -> EnvGuard {
        std::env::set_var(name, value);
        EnvGuard(name)
    }
}

impl Drop for EnvGuard {
    fn drop(&mut self) {
        std::env::remove_var(self.0);
    }
}

/// A pod the test ran, stopped and removed on drop, with the pod-level cgroups the kubelet
/// would have removed (the runtime removes only its containers').
struct PodGuard<'a> {
    socket: &'a std::path::Path,
    pod: tracer_tests::cri::Pod,
    uid: String,
}

impl Drop for PodGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = tracer_tests::cri::remove_pod(self.socket, &self.pod.sandbox_id) {
            eprintln!("removing the pod: {e}");
        }
        // In every hierarchy: the pod's directory, then its parents if nothing else is in
        // them (rmdir refuses a cgroup with children or processes: a real node's stay).
        let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        // v1 controllers and a hybrid unified mount below /sys/fs/cgroup, or cgroup v2 there.
        let roots = hierarchies
            .flatten()
            .map(|h| h.path())
            .chain([std::path::PathBuf::from("/sys/fs/cgroup")]);
        for root in roots {
            let base = root.join("kubepods");
            for dir in [
                base.join(format!("besteffort/pod{}", self.uid)),
                base.join("besteffort"),
                base.clone(),
            ] {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// A Kubernetes pod run through containerd's CRI (the calls the kubelet makes), on the host's
/// network with the kubelet's cgroupfs layout: tracer names its container and pod from the CRI
/// runtime's lists (`ListPodSandbox`, `ListContainers`), selects it with `--pod`, and `ports`
/// shows it on its listener.
#[test]
fn a_pod_is_named_by_the_cri_runtime() {
    let name = "a_pod_is_named_by_the_cri_runtime";
    if !ready(name) || !tool(name, "containerd", "containerd") || !tool(name, "ctr", "containerd") {
        return;
    }
    let daemon = Daemon::up();
    daemon.image();
    let containerd = Containerd::up();
    // tracer finds the runtime where crictl would.
    let _endpoint = EnvGuard::set(
        "CONTAINER_RUNTIME_ENDPOINT",
        &format!("unix://{}", containerd.socket.display()),
    );
    let mut all = Tracer::watch(&["--proto", "tcp"]);
    let only = Tracer::watch(&["--pod", "shop/web-0"]);
    let port = free_port();
    let uid = format!("7e1c2a9b-0d3f-4e5a-8b6c-{:012x}", std::process::id());
    let pod = tracer_tests::cri::run_pod(
        &containerd.socket,
        ("shop", "web-0", &uid),
        "httpd",
        CRI_IMAGE,
        &["/bin/httpd", "-f", "-p", &port.to_string(), "-h", "/www"],
    )
    .unwrap_or_else(|e| panic!("running the pod: {e}\n{}", containerd.log_tail()));
    let pod = PodGuard {
        socket: &containerd.socket,
        pod,
        uid: uid.clone(),
    };
    let deadline = Instant::now() + T;
    while !curl(&format!("http://127.0.0.1:{port}/")).contains("hello from a container") {
        assert!(Instant::now() < deadline, "httpd in the pod never answered");
        std::thread::sleep(Duration::from_millis(200));
    }
    let in_pod = |evs: &[Value]| -> Vec<Value> {
        evs.iter()
            .filter(|e| e["type"] == "event" && e["pod_name"] == "web-0")
            .cloned()
            .collect()
    };
    all.wait_for(
        "httpd's listen and accept, named by the CRI runtime",
        T,
        |evs| {
            let named = in_pod(evs);
            named.iter().any(|e| e["event"] == "listen")
                && named.iter().any(|e| e["event"] == "accept")
        },
    );
    for e in in_pod(&all.events) {
        assert_eq!(e["container_name"], "httpd", "{e}");
        assert_eq!(e["pod_namespace"], "shop", "{e}");
        assert_eq!(e["pod_uid"], uid.as_str(), "{e}");
        assert_eq!(e["container_id"], pod.pod.container_id.as_str(), "{e}");
        // The path (the cgroupfs driver's bare id) names no runtime; the one that lists the
        // container does.
        assert_eq!(e["container_runtime"], "containerd", "{e}");
        assert_eq!(e["comm"], "httpd", "{e}");
    }
    // curl on the host stays the host's.
    assert!(all
        .events
        .iter()
        .filter(|e| e["type"] == "event" && e["comm"] == "curl")
        .all(|e| e["container_name"] == "host" && e["pod_name"] == Value::Null));
    let (_, _) = all.stop_with(libc::SIGINT);
    // --pod NAMESPACE/NAME: the pod's events, nothing of the host's.
    only_these(only, "pod_name", "web-0");
    // ports: the listener on the host's network, with its pod.
    let rows = tracer_json(&["ports", "--json"]);
    let listener = rows
        .iter()
        .find(|r| r["type"] == "socket" && r["lport"] == port && r["listening"] == true)
        .unwrap_or_else(|| panic!("no listener on {port}: {rows:?}"));
    assert_eq!(listener["container_name"], "httpd", "{listener}");
    assert_eq!(listener["pod_name"], "web-0", "{listener}");
    assert_eq!(listener["pod_namespace"], "shop", "{listener}");
    drop(pod);
    eprintln!("cri: pod shop/web-0 ({uid}) named by containerd's CRI in watch, --pod and ports");
}

/// Without cgroup v2 the programs read the caller's cgroup in a v1 controller's hierarchy
/// (`task->cgroups->subsys[N]->cgroup->kn->id`). `TRACER_CGROUP_V1=pids` takes that way here
/// (this host mounts both): Docker's container, whose pids cgroup is `/docker/<id>`, is still
/// named on its listen and accept.
#[test]
fn a_container_is_named_through_a_v1_hierarchy() {
    let name = "a_container_is_named_through_a_v1_hierarchy";
    if !ready(name) {
        return;
    }
    let has_pids_v1 = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains(" - cgroup ") && l.split(',').any(|o| o.trim() == "pids"));
    if !has_pids_v1 {
        assert!(!in_ci(), "{name}: needs a cgroup v1 pids hierarchy mounted");
        eprintln!("\n!!!! SKIPPED {name}: no cgroup v1 pids hierarchy mounted here !!!!\n");
        return;
    }
    let daemon = Daemon::up();
    daemon.image();
    // The syscall path too: the one a host without cgroup v2 runs on.
    let v1 = EnvGuard::set("TRACER_CGROUP_V1", "pids");
    let mut all = Tracer::watch(&["--proto", "tcp"]);
    let mut syscalls = Tracer::watch(&["--proto", "tcp", "--syscalls"]);
    drop(v1);
    let web = Web::run("v1", free_port());
    let ip = web.ip();
    let deadline = Instant::now() + T;
    while !curl(&format!("http://{ip}:80/")).contains("hello from a container") {
        assert!(Instant::now() < deadline, "httpd never answered");
        std::thread::sleep(Duration::from_millis(200));
    }
    all.wait_for("httpd's listen and accept, named through pids", T, |evs| {
        let named = containers_of(evs, &web.name);
        named.iter().any(|e| e["event"] == "listen") && named.iter().any(|e| e["event"] == "accept")
    });
    for e in containers_of(&all.events, &web.name) {
        assert_eq!(e["container_id"], web.id.as_str(), "{e}");
    }
    syscalls.wait_for(
        "httpd's accept on the syscall path, named through pids",
        T,
        |evs| {
            containers_of(evs, &web.name)
                .iter()
                .any(|e| e["event"] == "accept" && e["fd"].is_number())
        },
    );
    assert!(all
        .events
        .iter()
        .filter(|e| e["type"] == "event" && e["comm"] == "curl")
        .all(|e| e["container_name"] == "host"));
}
