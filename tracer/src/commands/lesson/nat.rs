//! `tracer lesson nat`: a throwaway router in three network namespaces of its own (the root
//! namespace is never touched), with the notes' NAT kinds as nftables rules, real connections
//! through it, `tracer nat` watching the router, and conntrack's table read at the end.
//!
//! ```text
//!   inside 192.0.2.0/24            router                    outside 203.0.113.0/24
//!   .5 .10 .11 .21 .22  <-> lan 192.0.2.1 | wan 203.0.113.10 (.11 .20 .21) <-> .100
//! ```
//!
//! - PAT/NAPT (masquerade to ports 60000-60099): 192.0.2.5:5000 leaves as 203.0.113.10:600xx,
//!   the notes' `192.168.0.5:5000 → 203.0.113.10:60000` with documentation-range addresses;
//! - static NAT, one address to one: 192.0.2.11 ↔ 203.0.113.11, ports kept;
//! - dynamic NAT from a pool: 192.0.2.21 and .22 → one of 203.0.113.20-21, ports kept;
//! - DNAT, a port forward: 203.0.113.10:8080 → the inside server 192.0.2.10:80.
//!
//! Everything goes, even on an error: the namespaces are deleted on drop (and Ctrl-C only
//! interrupts the waits).
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The three namespaces; those this run made are removed on drop.
struct Lab {
    inside: String,
    router: String,
    outside: String,
    made: Vec<String>,
}

impl Lab {
    fn new() -> Lab {
        let id = std::process::id();
        Lab {
            inside: format!("tracer-lesson-{id}-in"),
            router: format!("tracer-lesson-{id}-router"),
            outside: format!("tracer-lesson-{id}-out"),
            made: Vec::new(),
        }
    }

    /// Builds the namespaces, links, addresses, routes and the router's rules. Every link is
    /// made inside the namespaces (nothing ever sits in the root namespace, even when a step
    /// fails halfway).
    fn up(&mut self) -> Result<()> {
        for ns in [
            self.inside.clone(),
            self.router.clone(),
            self.outside.clone(),
        ] {
            ip(&["netns", "add", &ns])?;
            self.made.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "-n",
            &self.inside,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "lan",
            "netns",
            &self.router,
        ])?;
        ip(&[
            "-n",
            &self.router,
            "link",
            "add",
            "wan",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &self.outside,
        ])?;
        for a in [
            "192.0.2.5",
            "192.0.2.10",
            "192.0.2.11",
            "192.0.2.21",
            "192.0.2.22",
        ] {
            ip(&[
                "-n",
                &self.inside,
                "addr",
                "add",
                &format!("{a}/24"),
                "dev",
                "eth0",
            ])?;
        }
        ip(&["-n", &self.inside, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &self.inside,
            "route",
            "add",
            "default",
            "via",
            "192.0.2.1",
        ])?;
        ip(&[
            "-n",
            &self.router,
            "addr",
            "add",
            "192.0.2.1/24",
            "dev",
            "lan",
        ])?;
        // The public address first: masquerade takes the interface's primary one.
        for a in [
            "203.0.113.10",
            "203.0.113.11",
            "203.0.113.20",
            "203.0.113.21",
        ] {
            ip(&[
                "-n",
                &self.router,
                "addr",
                "add",
                &format!("{a}/24"),
                "dev",
                "wan",
            ])?;
        }
        ip(&["-n", &self.router, "link", "set", "lan", "up"])?;
        ip(&["-n", &self.router, "link", "set", "wan", "up"])?;
        in_ns(&self.router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        ip(&[
            "-n",
            &self.outside,
            "addr",
            "add",
            "203.0.113.100/24",
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &self.outside, "link", "set", "eth0", "up"])?;
        let rules = r#"table ip lesson {
    chain pre {
        type nat hook prerouting priority dstnat;
        iifname "wan" tcp dport 8080 dnat to 192.0.2.10:80
        iifname "wan" ip daddr 203.0.113.11 dnat to 192.0.2.11
    }
    chain post {
        type nat hook postrouting priority srcnat;
        oifname "wan" ip saddr 192.0.2.11 snat to 203.0.113.11
        oifname "wan" ip saddr { 192.0.2.21, 192.0.2.22 } snat to 203.0.113.20-203.0.113.21
        oifname "wan" ip saddr 192.0.2.5 meta l4proto tcp masquerade to :60000-60099
    }
}
"#;
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &self.router, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io("running nft (Debian package nftables)", e))?;
        if let Some(mut stdin) = nft.stdin.take() {
            std::io::Write::write_all(&mut stdin, rules.as_bytes())
                .map_err(|e| Error::io("writing the router's rules", e))?;
        }
        let out = nft
            .wait_with_output()
            .map_err(|e| Error::io("running nft", e))?;
        if !out.status.success() {
            return Err(Error::Invalid(format!(
                "nft refused the lesson's rules: {}",
                crate::text::escape(String::from_utf8_lossy(&out.stderr).trim())
            )));
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.made {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error::io("running ip (Debian package iproute2)", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "ip {}: {}",
            args.join(" "),
            crate::text::escape(String::from_utf8_lossy(&out.stderr).trim())
        )))
    }
}

fn in_ns(ns: &str, args: &[&str]) -> Result<std::process::Output> {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .map_err(|e| Error::io(format!("running {} in {ns}", args[0]), e))
}

/// The connections the lesson makes, each (namespace, scenario, what it shows).
fn clients(lab: &Lab) -> [(&str, String, &'static str); 5] {
    [
        (
            &lab.inside,
            "nat-client,192.0.2.5,5000,203.0.113.100,80".into(),
            "pat",
        ),
        (
            &lab.inside,
            "nat-client,192.0.2.11,0,203.0.113.100,80".into(),
            "static",
        ),
        (
            &lab.inside,
            "nat-client,192.0.2.21,0,203.0.113.100,80".into(),
            "dynamic",
        ),
        (
            &lab.inside,
            "nat-client,192.0.2.22,0,203.0.113.100,80".into(),
            "dynamic",
        ),
        (
            &lab.outside,
            "nat-client,203.0.113.100,0,203.0.113.10,8080".into(),
            "dnat",
        ),
    ]
}

fn actor(exe: &Path, ns: &str, scenario: &str, report: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .arg(exe)
        .args(["__lesson-actor", scenario, "--report"])
        .arg(report);
    c
}

fn wait_for(path: &Path, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        if Instant::now() > deadline {
            return Err(Error::Invalid(format!("the lesson's {what} did not start")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn read_json(path: &Path) -> Value {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// A child stopped with SIGINT on drop (tracer nat, a server that did not finish).
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        // Reaped already: its pid may be another process's now.
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Builds the router, starts the servers and `tracer nat`, makes the connections, reads the
/// router's conntrack table, and gathers it all: `tracer nat`'s records; the report has each
/// client's own end, each server's peers, and conntrack's lines.
pub fn gather(exe: &Path, dir: &Path) -> Result<super::Gathered> {
    let mut lab = Lab::new();
    lab.up()?;
    let report = |name: &str| -> PathBuf { dir.join(format!("{name}.json")) };
    // The servers: outside (for the inside clients) and inside (behind the port forward).
    let servers = [
        (
            &lab.outside,
            "nat-server,203.0.113.100,80,4",
            report("outside"),
        ),
        (&lab.inside, "nat-server,192.0.2.10,80,1", report("inside")),
    ];
    let mut running = Vec::new();
    for (ns, scenario, path) in &servers {
        let child = actor(exe, ns, scenario, path)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| Error::io("starting a lesson server", e))?;
        running.push(Stopped(child));
        wait_for(&path.with_extension("ready"), "server")?;
    }
    let mut nat = Command::new(exe)
        .args(["nat", "--netns", &lab.router, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("running tracer nat", e))?;
    let stdout = nat.stdout.take();
    let stderr = nat.stderr.take();
    let nat = Stopped(nat);
    // Its records, read as they come; its `ready` record says when it is attached.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let lines = std::thread::spawn(move || -> Vec<Value> {
        let mut records = Vec::new();
        if let Some(o) = stdout {
            for line in BufReader::new(o).lines().map_while(|l| l.ok()) {
                let Ok(record) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if record["type"] == "ready" {
                    let _ = ready_tx.send(());
                }
                records.push(record);
            }
        }
        records
    });
    std::thread::spawn(move || {
        if let Some(e) = stderr {
            for line in BufReader::new(e).lines().map_while(|l| l.ok()) {
                eprintln!("{}", crate::text::escape_log(&line));
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| {
            Error::Invalid("tracer nat did not start watching the lesson's router".into())
        })?;
    let mut observed = Vec::new();
    for (i, (ns, scenario, shows)) in clients(&lab).iter().enumerate() {
        let path = report(&format!("client{i}"));
        let status = actor(exe, ns, scenario, &path)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| Error::io("running a lesson client", e))?;
        if !status.success() {
            return Err(Error::Invalid(format!(
                "the lesson's client {scenario} failed"
            )));
        }
        let mut seen = read_json(&path);
        seen["shows"] = json!(shows);
        observed.push(seen);
    }
    // The servers have had their connections: their reports are written as they exit.
    for s in running.iter_mut() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(s.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let conntrack = in_ns(&lab.router, &["conntrack", "-L", "-p", "tcp"])?;
    if !conntrack.status.success() {
        return Err(Error::Invalid(
            "conntrack -L failed in the lesson's router: the lesson shows conntrack's table (Debian package conntrack)".into(),
        ));
    }
    let conntrack: Vec<String> = String::from_utf8_lossy(&conntrack.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    // Let the flows' last records come, then stop watching.
    std::thread::sleep(Duration::from_millis(1500));
    drop(nat);
    let records = lines.join().unwrap_or_default();
    drop(running);
    let servers: Vec<Value> = servers.iter().map(|(_, _, p)| read_json(p)).collect();
    drop(lab);
    Ok(super::Gathered {
        records,
        report: json!({"clients": observed, "servers": servers, "conntrack": conntrack}),
        range: crate::kernel::netns::read_port_range()?,
    })
}
