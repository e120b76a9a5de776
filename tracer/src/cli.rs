//! Command-line definitions (clap) and their validation into plain config structs.
//! Nothing here touches the kernel; validation failures are one-line errors.
use clap::{builder::PossibleValuesParser, Args, Parser, Subcommand, ValueEnum};
use tracer_common::{KernelFilter, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, MAX_PORT_FILTERS};

use crate::error::{Error, Result};
use crate::kernel::{netns, snapshot::Scope};
use crate::model::event::EVENT_NAMES;
use crate::model::ports::{RowFilter, SortKey};

#[derive(Debug, Parser)]
#[command(
    name = "tracer",
    version,
    about = "Live eBPF tracer of sockets, ports and the TCP state machine"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show every socket call and TCP state change as it happens, with its process and the
    /// ports the kernel chose.
    Watch(WatchArgs),
    /// List the sockets open now with the process holding each, the class of each port, and
    /// how much of the ephemeral port range is in use (`--live` for a view that updates).
    Ports(PortsArgs),
    /// Run headless as a daemon: serve Prometheus metrics (no per-event output).
    Serve(ServeArgs),
    /// Tell the story of one program's sockets, step by step: start CMD (or follow --pid /
    /// --comm) and every child it forks, until it exits.
    Trace(TraceArgs),
    /// Watch NAT live: every binding a router makes (SNAT, DNAT, masquerade, port
    /// translation) with its original and translated tuples, when it ends with its packet
    /// counts, and the flow it belongs to (client process → rewrite → server process).
    Nat(NatArgs),
    /// Internal: the launcher `trace` starts, which waits until the probes are attached and
    /// then becomes the command.
    #[command(hide = true, name = "__exec-when-ready")]
    ExecWhenReady {
        gate_fd: i32,
        /// The user to become once the gate opens (its name gives the supplementary groups).
        #[arg(long)]
        user: String,
        #[arg(long)]
        uid: u32,
        #[arg(long)]
        gid: u32,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
    /// Show which hooks this kernel offers and which of them tracer uses.
    Doctor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// One JSON object per line instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Only these events (comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = PossibleValuesParser::new(EVENT_NAMES))]
    pub events: Vec<String>,
    /// Never colour the table, even on a terminal.
    #[arg(long)]
    pub no_color: bool,
    /// Instead of one line per event, summarise connections grouped by remote endpoint (many
    /// connections to one server, each from its own local port), every few seconds and at exit.
    #[arg(long, value_enum, value_name = "WHAT")]
    pub group_by: Option<GroupBy>,
    /// Also serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub nat: WatchNatArgs,
    #[command(flatten)]
    pub filters: FilterArgs,
}

/// NAT options of `watch` and `serve`.
#[derive(Debug, Args)]
pub struct WatchNatArgs {
    /// Also show NAT bindings made in tracer's own network namespace, and flows through them.
    #[arg(long)]
    pub nat: bool,
    /// Also show NAT bindings made in this namespace (a name under /run/netns or a path;
    /// repeatable), e.g. a test router.
    #[arg(long, value_name = "NAME|PATH", conflicts_with = "nat_all_netns")]
    pub nat_netns: Vec<String>,
    /// Also show NAT bindings made in every network namespace.
    #[arg(long)]
    pub nat_all_netns: bool,
    /// With --nat-all-netns: follow at most this many namespaces at once (the rest are
    /// reported once and not watched).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_NETNS, requires = "nat_all_netns")]
    pub max_netns: usize,
    /// Where bindings come from: the netfilter eBPF programs (Linux 6.4+, with packet
    /// counters), conntrack netlink events, or auto (eBPF when the kernel has it).
    #[arg(long, value_enum, default_value = "auto")]
    pub nat_source: NatSourceChoice,
}

impl WatchNatArgs {
    fn validate(self) -> Result<Option<(NatTargets, NatSourceChoice)>> {
        let targets = if self.nat_all_netns {
            NatTargets::All
        } else if !self.nat_netns.is_empty() {
            named_targets(&self.nat_netns)?
        } else if self.nat {
            NatTargets::Host
        } else {
            return Ok(None);
        };
        Ok(Some((targets, self.nat_source)))
    }
}

fn max_netns(n: usize) -> Result<usize> {
    if n == 0 {
        return Err(Error::Invalid("--max-netns 0: must be at least 1".into()));
    }
    Ok(n)
}

fn ringbuf_bytes(kib: u32) -> Result<u32> {
    if kib < 4 || !kib.is_power_of_two() || kib > 1 << 20 {
        return Err(Error::Invalid(format!(
            "--ringbuf-kib {kib}: must be a power of two between 4 and 1048576"
        )));
    }
    Ok(kib * 1024)
}

fn duration(seconds: Option<f64>) -> Result<Option<std::time::Duration>> {
    match seconds {
        Some(s) if !(s.is_finite() && s > 0.0) => Err(Error::Invalid(format!(
            "--duration {s}: must be a positive number of seconds"
        ))),
        Some(s) => Ok(Some(std::time::Duration::from_secs_f64(s))),
        None => Ok(None),
    }
}

fn named_targets(specs: &[String]) -> Result<NatTargets> {
    let mut list = Vec::new();
    for spec in specs {
        let (path, _) = netns::resolve(spec)?;
        list.push((spec.clone(), path));
    }
    Ok(NatTargets::Named(list))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NatSourceChoice {
    Auto,
    Ebpf,
    Conntrack,
}

/// Which network namespaces NAT is watched in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatTargets {
    /// tracer's own.
    Host,
    /// (name as given, path).
    Named(Vec<(String, std::path::PathBuf)>),
    /// Every namespace, including ones that appear later, up to `--max-netns` at once (each
    /// costs a conntrack thread, a netlink socket and eight netfilter links; any user can
    /// create namespaces).
    All,
}

/// `--max-netns` when not given.
pub const DEFAULT_MAX_NETNS: usize = 64;

#[derive(Debug, Args)]
pub struct NatArgs {
    /// One JSON object per line (nat_binding, nat_end, flow) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Watch NAT in this network namespace (a name under /run/netns or a path such as
    /// /proc/PID/ns/net; repeatable). Default: tracer's own.
    #[arg(long, value_name = "NAME|PATH", conflicts_with = "all_netns")]
    pub netns: Vec<String>,
    /// Watch NAT in every network namespace, including ones created later.
    #[arg(long)]
    pub all_netns: bool,
    /// With --all-netns: follow at most this many namespaces at once (the rest are reported
    /// once and not watched).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_NETNS, requires = "all_netns")]
    pub max_netns: usize,
    /// Where bindings come from (see `watch --nat-source`).
    #[arg(long, value_enum, default_value = "auto")]
    pub source: NatSourceChoice,
    /// Only bindings: do not load the socket probes that stitch flows.
    #[arg(long)]
    pub no_flows: bool,
    /// Never colour the table, even on a terminal.
    #[arg(long)]
    pub no_color: bool,
    /// Ring buffer size in KiB (a power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = 4096)]
    pub ringbuf_kib: u32,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct NatConfig {
    pub json: bool,
    pub color: bool,
    pub targets: NatTargets,
    pub source: NatSourceChoice,
    pub flows: bool,
    pub ringbuf_bytes: u32,
    pub duration: Option<std::time::Duration>,
    /// `--all-netns`: namespaces followed at once, at most.
    pub max_netns: usize,
}

impl NatArgs {
    pub fn validate(self) -> Result<NatConfig> {
        let targets = if self.all_netns {
            NatTargets::All
        } else if !self.netns.is_empty() {
            named_targets(&self.netns)?
        } else {
            NatTargets::Host
        };
        let color = !self.no_color && !self.json && {
            use std::io::IsTerminal;
            std::io::stdout().is_terminal()
        };
        Ok(NatConfig {
            json: self.json,
            color,
            targets,
            source: self.source,
            flows: !self.no_flows,
            ringbuf_bytes: ringbuf_bytes(self.ringbuf_kib)?,
            duration: duration(self.duration)?,
            max_netns: max_netns(self.max_netns)?,
        })
    }
}

/// `tracer serve`: metrics only, no per-event output.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to serve /metrics and /healthz. Loopback by default; any other address is
    /// reachable by others, so it must be given explicitly.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub listen: std::net::SocketAddr,
    /// At most this many listening ports get their own tracer_listen_port_info series; the
    /// rest share port="other".
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_listen_ports: usize,
    #[command(flatten)]
    pub nat: WatchNatArgs,
    #[command(flatten)]
    pub filters: FilterArgs,
}

/// What to watch: filters applied in the kernel, and how long.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only this process and the children it forks (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only processes with this command name (exact, as in /proc/PID/comm).
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Only sockets with this local or remote port (repeatable, up to 8).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Only this protocol.
    #[arg(long, value_enum)]
    pub proto: Option<Proto>,
    /// Only IPv4 sockets.
    #[arg(long, conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Only IPv6 sockets.
    #[arg(long)]
    pub ipv6: bool,
    /// Only sockets in this network namespace: a name under /run/netns or a path
    /// (/proc/PID/ns/net).
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    /// Ring buffer size in KiB (a power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = 4096)]
    pub ringbuf_kib: u32,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The story as JSON records instead of text.
    #[arg(long)]
    pub json: bool,
    /// Add a sentence per step connecting it to the concept it shows.
    #[arg(long)]
    pub explain: bool,
    /// Follow these running processes and their children instead of starting a command.
    #[arg(long = "pid", value_name = "PID", conflicts_with_all = ["comm", "command"])]
    pub pids: Vec<u32>,
    /// Follow processes with this command name (until Ctrl-C).
    #[arg(long, value_name = "NAME", conflicts_with = "command")]
    pub comm: Option<String>,
    /// Run the command as this user, with that user's groups and environment (HOME, USER,
    /// LOGNAME, SHELL) as `sudo -u USER` gives. Default: the user who ran sudo (SUDO_UID);
    /// without one, tracer refuses rather than run the command as root: `--user root` says
    /// that is what you want.
    #[arg(long, value_name = "USER", requires = "command")]
    pub user: Option<String>,
    /// The command to start and trace, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// What `trace` follows.
#[derive(Debug, Clone)]
pub enum TraceTarget {
    /// Start this command as `user`.
    Command {
        argv: Vec<String>,
        user: RunAs,
    },
    /// These processes and their descendants (now and later).
    Pids(Vec<u32>),
    Comm(String),
}

/// The user a traced command runs as, from the user database (as `sudo -u` would).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: std::path::PathBuf,
    pub shell: std::path::PathBuf,
}

impl RunAs {
    fn from_user(user: nix::unistd::User) -> RunAs {
        RunAs {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
            shell: user.shell,
        }
    }

    /// `--user NAME` (or a numeric uid, as `sudo -u '#1000'` allows).
    fn named(spec: &str) -> Result<RunAs> {
        let no_such = || Error::Invalid(format!("--user {spec:?}: no such user"));
        let by_name = nix::unistd::User::from_name(spec).ok().flatten();
        let user = match by_name {
            Some(user) => user,
            None => {
                let uid = spec
                    .trim_start_matches('#')
                    .parse::<u32>()
                    .map_err(|_| no_such())?;
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .ok_or_else(no_such)?
            }
        };
        Ok(RunAs::from_user(user))
    }

    /// Without `--user`: the user behind sudo (`SUDO_UID`). Never root by accident: with no
    /// `SUDO_UID`, or `SUDO_UID=0`, root must be asked for by name.
    fn invoking(command: &str, sudo_uid: Option<&str>) -> Result<RunAs> {
        let euid = nix::unistd::geteuid();
        let uid = if euid.is_root() {
            match sudo_uid.and_then(|v| v.parse::<u32>().ok()) {
                Some(uid) if uid != 0 => uid,
                _ => return Err(Error::TraceAsRoot(command.to_string())),
            }
        } else {
            // Not root: tracer stops at its root check anyway; nothing runs as anyone else.
            euid.as_raw()
        };
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(RunAs::from_user)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "uid {uid} (SUDO_UID) has no entry in the user database: pass --user USER"
                ))
            })
    }
}

#[derive(Debug, Clone)]
pub struct TraceConfig {
    pub json: bool,
    pub explain: bool,
    pub target: TraceTarget,
}

impl TraceArgs {
    pub fn validate(self) -> Result<TraceConfig> {
        let target = if !self.command.is_empty() {
            let user = match &self.user {
                Some(name) => RunAs::named(name)?,
                None => RunAs::invoking(
                    &self.command.join(" "),
                    std::env::var("SUDO_UID").ok().as_deref(),
                )?,
            };
            TraceTarget::Command {
                argv: self.command,
                user,
            }
        } else if !self.pids.is_empty() {
            TraceTarget::Pids(with_descendants(&self.pids)?)
        } else if let Some(comm) = self.comm {
            if comm.is_empty() || comm.len() > 15 {
                return Err(Error::Invalid(format!(
                    "--comm {comm:?}: a command name is 1 to 15 bytes"
                )));
            }
            TraceTarget::Comm(comm)
        } else {
            return Err(Error::Invalid(
                "trace what? give a command after `--` (tracer trace -- curl http://…), --pid PID or --comm NAME".into(),
            ));
        };
        Ok(TraceConfig {
            json: self.json,
            explain: self.explain,
            target,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupBy {
    /// Connections to one remote address and port.
    Remote,
}

#[derive(Debug, Args)]
pub struct PortsArgs {
    /// Keep a full-screen view open that updates as sockets open and close (q quits).
    #[arg(long)]
    pub live: bool,
    /// One JSON object per line instead of the table.
    #[arg(long, conflicts_with = "live")]
    pub json: bool,
    /// Only sockets held by this process (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only sockets with this local or remote port (repeatable).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Only this protocol.
    #[arg(long, value_enum)]
    pub proto: Option<Proto>,
    /// Only listening sockets (TCP LISTEN, unconnected UDP).
    #[arg(long)]
    pub listening: bool,
    /// Also list TIME_WAIT sockets (closed connections that keep their port for a minute; the
    /// ephemeral usage always counts them).
    #[arg(long)]
    pub time_wait: bool,
    /// Look in this network namespace (a name under /run/netns or a path such as
    /// /proc/PID/ns/net) instead of tracer's own.
    #[arg(long, value_name = "NAME|PATH", conflicts_with = "all_netns")]
    pub netns: Option<String>,
    /// Look in every network namespace.
    #[arg(long)]
    pub all_netns: bool,
    /// Sort by this column.
    #[arg(long, value_enum, default_value = "proto")]
    pub sort: SortKey,
    /// Sort in descending order.
    #[arg(long)]
    pub reverse: bool,
    /// Print connections grouped by remote endpoint instead of one row per socket.
    #[arg(long, value_enum, value_name = "WHAT", conflicts_with = "live")]
    pub group_by: Option<GroupBy>,
}

/// A validated `ports` configuration.
#[derive(Debug, Clone)]
pub struct PortsConfig {
    pub live: bool,
    pub json: bool,
    pub filter: RowFilter,
    pub scope: Scope,
    pub sort: SortKey,
    pub reverse: bool,
    pub group_by: Option<GroupBy>,
}

impl PortsArgs {
    pub fn validate(self) -> Result<PortsConfig> {
        let (scope, netns) = match (&self.netns, self.all_netns) {
            (Some(spec), _) => {
                let (path, inode) = netns::resolve(spec)?;
                (Scope::One(path), Some(inode))
            }
            (None, true) => (Scope::All, None),
            (None, false) => (
                Scope::One("/proc/self/ns/net".into()),
                Some(netns::own_inode()?),
            ),
        };
        for &pid in &self.pids {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return Err(Error::NoSuchPid(pid));
            }
        }
        Ok(PortsConfig {
            live: self.live,
            json: self.json,
            filter: RowFilter {
                pids: self.pids,
                ports: self.ports,
                proto: self.proto.map(|p| match p {
                    Proto::Tcp => "tcp",
                    Proto::Udp => "udp",
                }),
                listening: self.listening,
                time_wait: self.time_wait,
                netns,
                text: String::new(),
            },
            scope,
            sort: self.sort,
            reverse: self.reverse,
            group_by: self.group_by,
        })
    }
}

/// A validated `watch` configuration.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub json: bool,
    pub kernel_filter: KernelFilter,
    /// The `--pid` processes and their descendants at start.
    pub pids: Vec<u32>,
    pub comm: Option<String>,
    pub events: Vec<String>,
    pub ringbuf_bytes: u32,
    pub duration: Option<std::time::Duration>,
    pub color: bool,
    pub group_by: Option<GroupBy>,
    /// Where the start-up snapshot looks: the `--netns` namespace, or all of them.
    pub snapshot_scope: Scope,
    /// Serve Prometheus metrics here.
    pub metrics: Option<std::net::SocketAddr>,
    /// No per-event output (`serve`).
    pub quiet: bool,
    pub max_listen_ports: usize,
    /// Also watch NAT: where, and from which source.
    pub nat: Option<(NatTargets, NatSourceChoice)>,
    /// `--nat-all-netns`: namespaces followed at once, at most.
    pub nat_max_netns: usize,
}

impl WatchArgs {
    pub fn validate(self) -> Result<WatchConfig> {
        let color = !self.no_color && !self.json && {
            use std::io::IsTerminal;
            std::io::stdout().is_terminal()
        };
        let mut config = self.filters.validate(&self.events)?;
        config.json = self.json;
        config.events = self.events;
        config.color = color;
        config.group_by = self.group_by;
        config.metrics = self.metrics;
        config.nat_max_netns = max_netns(self.nat.max_netns)?;
        config.nat = self.nat.validate()?;
        Ok(config)
    }
}

impl ServeArgs {
    pub fn validate(self) -> Result<WatchConfig> {
        let mut config = self.filters.validate(&[])?;
        config.metrics = Some(self.listen);
        config.quiet = true;
        config.max_listen_ports = self.max_listen_ports;
        config.nat_max_netns = max_netns(self.nat.max_netns)?;
        config.nat = self.nat.validate()?;
        Ok(config)
    }
}

impl FilterArgs {
    /// The kernel filter and the rest of a watch configuration (output options at defaults).
    fn validate(self, events: &[String]) -> Result<WatchConfig> {
        let bad = Error::Invalid;
        let mut filter = KernelFilter::default();
        if self.ports.len() > MAX_PORT_FILTERS {
            return Err(bad(format!("at most {MAX_PORT_FILTERS} --port values")));
        }
        for (slot, port) in filter.ports.iter_mut().zip(&self.ports) {
            *slot = *port;
        }
        filter.port_count = self.ports.len() as u16;
        filter.protocol = match self.proto {
            Some(Proto::Tcp) => IPPROTO_TCP,
            Some(Proto::Udp) => IPPROTO_UDP,
            None => 0,
        };
        filter.family = if self.ipv4 {
            AF_INET
        } else if self.ipv6 {
            AF_INET6
        } else {
            0
        };
        let mut snapshot_scope = Scope::All;
        if let Some(spec) = &self.netns {
            let (path, inode) = netns::resolve(spec)?;
            filter.netns = inode;
            snapshot_scope = Scope::One(path);
        }
        if let Some(comm) = &self.comm {
            if comm.is_empty() || comm.len() > 15 {
                return Err(bad(format!(
                    "--comm {comm:?}: a command name is 1 to 15 bytes (the kernel truncates longer names)"
                )));
            }
            filter.by_comm = 1;
            filter.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        }
        let mut pids = Vec::new();
        if !self.pids.is_empty() {
            filter.by_pid = 1;
            pids = with_descendants(&self.pids)?;
        }
        let udp_events = ["sendto", "recvfrom", "sendmsg", "recvmsg"];
        let wants_udp_data =
            events.is_empty() || events.iter().any(|e| udp_events.contains(&e.as_str()));
        filter.udp_data = u8::from(wants_udp_data && filter.protocol != IPPROTO_TCP);
        let ringbuf_bytes = ringbuf_bytes(self.ringbuf_kib)?;
        let duration = duration(self.duration)?;
        Ok(WatchConfig {
            json: false,
            kernel_filter: filter,
            pids,
            comm: self.comm,
            events: Vec::new(),
            ringbuf_bytes,
            duration,
            color: false,
            group_by: None,
            snapshot_scope,
            metrics: None,
            quiet: false,
            max_listen_ports: 64,
            nat_max_netns: DEFAULT_MAX_NETNS,
            nat: None,
        })
    }
}

/// The given processes and every descendant they have now (later forks are followed in the
/// kernel).
fn with_descendants(roots: &[u32]) -> Result<Vec<u32>> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    if let Ok(all) = procfs::process::all_processes() {
        for proc in all.flatten() {
            if let Ok(stat) = proc.stat() {
                children
                    .entry(stat.ppid as u32)
                    .or_default()
                    .push(stat.pid as u32);
            }
        }
    }
    let mut out = Vec::new();
    for &root in roots {
        if !std::path::Path::new(&format!("/proc/{root}")).exists() {
            return Err(Error::NoSuchPid(root));
        }
        let mut stack = vec![root];
        while let Some(pid) = stack.pop() {
            if out.contains(&pid) {
                continue;
            }
            out.push(pid);
            stack.extend(children.get(&pid).into_iter().flatten().copied());
        }
    }
    Ok(out)
}
