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
            return Daemon { started: None };
        }
        let child = Command::new("dockerd")
            .args(["--bip", BRIDGE_IP, "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dockerd");
        let daemon = Daemon {
            started: Some(child),
        };
        let deadline = Instant::now() + T;
        while !answering() {
            assert!(Instant::now() < deadline, "dockerd did not answer in {T:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        daemon
    }

    /// The busybox image, made from busybox-static (no registry).
    fn image(&self) {
        if docker(&["images", "-q", IMAGE]).is_empty() {
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
                    &format!("tar -C {root} -c . | docker import - {IMAGE}"),
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
        // What dockerd leaves behind: its bridge and its iptables chains.
        let _ = Command::new("ip").args(["link", "del", "docker0"]).status();
        let _ = Command::new("sh")
            .args([
                "-c",
                "for t in nat filter; do iptables-save -t $t | grep -v -e 'DOCKER' > /tmp/tracer-ipt.$$ && iptables-restore -T $t < /tmp/tracer-ipt.$$; rm -f /tmp/tracer-ipt.$$; done",
            ])
            .status();
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
    let mut only = Tracer::watch(&["--container", &web.name]);
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
    only.wait_for("the container's accept", T, |evs| {
        evs.iter()
            .any(|e| e["type"] == "event" && e["event"] == "accept")
    });
    let (_, shown) = only.stop_with(libc::SIGINT);
    let events: Vec<&Value> = shown.iter().filter(|e| e["type"] == "event").collect();
    assert!(!events.is_empty());
    for e in &events {
        assert_eq!(e["container_name"], web.name.as_str(), "{e}");
    }
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
