//! The forwarding router the NAT benchmark loads: three network namespaces (client, router,
//! server) joined by veth pairs, IPv4 forwarding and an nft masquerade of the client subnet on
//! the router's server-side interface, so every connection makes a conntrack NAT binding. The
//! namespaces (and with them the veths, the nft table and their sysctls) go on drop.
use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// Client side: 192.0.2.0/24, server side: 198.51.100.0/24 (documentation ranges).
pub const SERVER_ADDR: &str = "198.51.100.2:8080";

const RULESET: &str = r#"table ip tracer_bench {
    chain post {
        type nat hook postrouting priority srcnat;
        oifname "rs" masquerade
    }
}
"#;

const PREFIX: &str = "tracer-bench-";

pub struct Topology {
    pub client: String,
    pub router: String,
    pub server: String,
    made: Vec<String>,
    listener: Option<Child>,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes namespaces an earlier run left behind (killed before its drop ran): ours carry the
/// pid of the run that made them, and that process is gone.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.rsplit('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("bench: deleting namespace {name} left by an earlier run");
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Topology {
    pub fn up() -> Result<Topology> {
        remove_stale();
        let pid = std::process::id();
        let name = |role: &str| format!("{PREFIX}{role}-{pid}");
        let mut topo = Topology {
            client: name("cli"),
            router: name("rtr"),
            server: name("srv"),
            made: Vec::new(),
            listener: None,
        };
        for ns in [
            topo.client.clone(),
            topo.router.clone(),
            topo.server.clone(),
        ] {
            ip(&["netns", "add", &ns])?;
            topo.made.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        topo.wire()?;
        Ok(topo)
    }

    /// The veth pairs (made inside the namespaces, so no name can clash with the host's), the
    /// addresses, routes, sysctls and the masquerade rule.
    fn wire(&self) -> Result<()> {
        let (c, r, s) = (
            self.client.as_str(),
            self.router.as_str(),
            self.server.as_str(),
        );
        ip(&[
            "-n", c, "link", "add", "c0", "type", "veth", "peer", "name", "rc", "netns", r,
        ])?;
        ip(&[
            "-n", s, "link", "add", "s0", "type", "veth", "peer", "name", "rs", "netns", r,
        ])?;
        for (ns, dev, addr) in [
            (c, "c0", "192.0.2.2/24"),
            (r, "rc", "192.0.2.1/24"),
            (r, "rs", "198.51.100.1/24"),
            (s, "s0", "198.51.100.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        ip(&["-n", c, "route", "add", "default", "via", "192.0.2.1"])?;
        self.sysctl(r, "net.ipv4.ip_forward=1")?;
        // The client's whole port range: TIME_WAIT stays on the server's side, but a wide range
        // keeps connect()'s port search short.
        self.sysctl(c, "net.ipv4.ip_local_port_range=1024 65535")?;
        let mut nft = Command::new("ip")
            .args(["netns", "exec", r, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .context("running nft (nftables)")?;
        nft.stdin
            .take()
            .context("nft stdin")?
            .write_all(RULESET.as_bytes())?;
        if !nft.wait()?.success() {
            bail!("nft -f in {r} failed");
        }
        Ok(())
    }

    fn sysctl(&self, ns: &str, setting: &str) -> Result<()> {
        ip(&["netns", "exec", ns, "sysctl", "-q", "-w", setting])
    }

    /// Starts `loadgen tcp-server` in the server namespace and waits until it listens.
    pub fn start_server(&mut self, loadgen: &Path) -> Result<u32> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.server])
            .arg(loadgen)
            .args(["tcp-server", SERVER_ADDR, "2"])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting loadgen tcp-server")?;
        let pid = child.id();
        let stdout = child.stdout.take().context("server stdout")?;
        self.listener = Some(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("loadgen tcp-server did not start: {line:?}");
        }
        Ok(pid)
    }

    /// A command run inside the client namespace.
    pub fn in_client(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.client]).arg(program);
        c
    }

    /// Empties the router's conntrack table, so every run starts from the same state (an old
    /// entry in TIME_WAIT for a reused tuple sends the new SYN down a slower path).
    pub fn flush_conntrack(&self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.router, "conntrack", "-F"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// The router's conntrack entries now (`nf_conntrack_count` of its namespace).
    pub fn conntrack_count(&self) -> u64 {
        self.router_file("/proc/sys/net/netfilter/nf_conntrack_count")
    }

    pub fn conntrack_max(&self) -> u64 {
        self.router_file("/proc/sys/net/netfilter/nf_conntrack_max")
    }

    fn router_file(&self, path: &str) -> u64 {
        Command::new("ip")
            .args(["netns", "exec", &self.router, "cat", path])
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(0)
    }

    /// `conntrack -S` in the router, summed over CPUs: (insert_failed, drop, early_drop).
    pub fn conntrack_failures(&self) -> (u64, u64, u64) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.router, "conntrack", "-S"])
            .stderr(Stdio::null())
            .output();
        let text = out.map(|o| o.stdout).unwrap_or_default();
        let sum = |key: &str| -> u64 {
            String::from_utf8_lossy(&text)
                .split_whitespace()
                .filter_map(|f| f.strip_prefix(key)?.parse::<u64>().ok())
                .sum()
        };
        (sum("insert_failed="), sum("drop="), sum("early_drop="))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(mut server) = self.listener.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        // Deleting a namespace takes its veth ends, nft table and sysctls with it.
        for ns in self.made.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("bench: could not delete namespace {ns}: {e:#}");
            }
        }
    }
}
