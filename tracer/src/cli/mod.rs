//! Command-line definitions (clap) and their validation into plain config structs.
//! Nothing here touches the system (no /proc, no namespaces, no user database): names of
//! processes, namespaces and users are resolved by the commands. Validation failures are
//! one-line errors.
use clap::{builder::PossibleValuesParser, Args, Parser, Subcommand, ValueEnum};

use crate::model::event::EVENT_NAMES;
use crate::model::nat::who::{self, Who};
use crate::model::ports::SortKey;

mod config;
pub use config::*;

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
    /// Replay a capture made by `watch --record FILE`: the same output, offline, as any user,
    /// on any machine.
    Replay(ReplayArgs),
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
    /// The study notes' tables (port ranges, the TCP server and client flows, UDP, the
    /// handshakes, ephemeral ports), filled in live: a small real scenario runs on 127.0.0.1,
    /// traced, and each row shows what the kernel did. Without NAME: the list.
    Lesson(LessonArgs),
    /// Internal: a lesson's scenario (the program `lesson` traces).
    #[command(hide = true, name = "__lesson-actor")]
    LessonActor {
        scenario: String,
        #[arg(long)]
        report: std::path::PathBuf,
    },
    /// Internal (the benchmark's floor row): attach a program that does nothing to every hook
    /// `watch` attaches on its path, and hold them until SIGINT or SIGTERM.
    #[command(hide = true, name = "__floor")]
    Floor {
        /// The syscall path's hooks instead of the socket path's.
        #[arg(long)]
        syscalls: bool,
    },
}

#[derive(Debug, Args)]
pub struct LessonArgs {
    /// The lesson (none: list them).
    pub name: Option<String>,
    /// Language of the tables and explanations (default: from LANG / LC_MESSAGES; English
    /// otherwise).
    #[arg(long, value_parser = ["ko", "en"])]
    pub lang: Option<String>,
    /// One JSON record per table row, with its live values.
    #[arg(long)]
    pub json: bool,
    /// Also write what the run gathered (the trace's records, the scenario's own values) to
    /// FILE, for `--replay`.
    #[arg(long, value_name = "FILE", conflicts_with = "replay")]
    pub record: Option<std::path::PathBuf>,
    /// Show a recorded lesson (from `--record`) instead of running one: no root, any
    /// machine, any language.
    #[arg(long, value_name = "FILE")]
    pub replay: Option<std::path::PathBuf>,
}

impl LessonArgs {
    pub fn validate(self) -> crate::error::Result<LessonConfig> {
        use crate::i18n::Lang;
        let lang = match self.lang.as_deref() {
            Some(code) => Lang::parse(code).unwrap_or(Lang::En),
            None => Lang::from_env(),
        };
        Ok(LessonConfig {
            name: self.name,
            lang,
            json: self.json,
            record: self.record,
            replay: self.replay,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
}

/// How `watch` and `replay` print.
#[derive(Debug, Args)]
pub struct OutputArgs {
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
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Also serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Also write everything this run reads (ring records, the start-up snapshot, the answers
    /// it got from the system) to a new file, for `tracer replay` (readable by its owner
    /// only; never overwrites).
    #[arg(long, value_name = "FILE")]
    pub record: Option<std::path::PathBuf>,
    /// Only sockets with this endpoint at either end, and NAT bindings that translated a
    /// connection to or from it (ADDR or ADDR:PORT: who is behind a router's address).
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub who: Option<Who>,
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
    /// Keep ended NAT bindings this many seconds, for `tracer nat --who … --agent` (0: none).
    #[arg(long, value_name = "SECONDS", default_value_t = who::DEFAULT_HISTORY_S)]
    pub nat_history: u64,
    /// Keep at most this many ended NAT bindings (the oldest go first, counted as evicted).
    #[arg(long, value_name = "N", default_value_t = who::DEFAULT_HISTORY_MAX)]
    pub nat_history_max: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NatSourceChoice {
    Auto,
    Ebpf,
    Conntrack,
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
    /// Who is behind this translated endpoint (ADDR or ADDR:PORT, e.g. a router's address as a
    /// server logged it): only bindings that translated a connection to or from it, with the
    /// client process, its namespace, its own address and port, and the server.
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub who: Option<Who>,
    /// With --who: ask the tracer agent serving at this address (`tracer serve`, or `watch
    /// --metrics`) instead of watching: it answers from its live bindings and those that
    /// ended within its --nat-history.
    #[arg(
        long,
        value_name = "HOST:PORT",
        requires = "who",
        conflicts_with_all = ["netns", "all_netns", "no_flows", "duration"]
    )]
    pub agent: Option<String>,
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
    /// Only processes in this container: its name, its id (4 digits or more of it), or
    /// `host` for processes in no container.
    #[arg(long, value_name = "NAME|ID")]
    pub container: Option<String>,
    /// Only processes in this Kubernetes pod: NAMESPACE/NAME (as the runtime labels it), or
    /// the pod's UID.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub pod: Option<String>,
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
    /// Take socket events from syscall tracepoints (every fd, return value and close, at a
    /// cost to every syscall on the machine) instead of socket hooks. Implied by --events
    /// close, shutdown, sendto or recvfrom.
    #[arg(long)]
    pub syscalls: bool,
    /// Leave the retransmit, reset and drop tracepoints (and their metrics) off; they are on
    /// by default.
    #[arg(long)]
    pub no_health: bool,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The story as JSON records instead of text.
    #[arg(long)]
    pub json: bool,
    /// Add a sentence per step connecting it to the concept it shows.
    #[arg(long)]
    pub explain: bool,
    /// Language of --explain's sentences (default: from LANG / LC_MESSAGES; English
    /// otherwise). JSON's `explain` field stays English.
    #[arg(long, value_parser = ["ko", "en"])]
    pub lang: Option<String>,
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
    /// Only sockets with this endpoint (ADDR or ADDR:PORT) at either end.
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub who: Option<Who>,
    /// Only sockets of processes in this container (name, id of 4 digits or more, or
    /// `host`); looks in every network namespace unless --netns says where.
    #[arg(long, value_name = "NAME|ID")]
    pub container: Option<String>,
    /// Only sockets of processes in this Kubernetes pod (NAMESPACE/NAME or UID).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub pod: Option<String>,
    /// Port mappings instead of sockets: each port published on this host (Docker's, a
    /// Kubernetes Service's, any DNAT rule's) → the rule or proxy that forwards it → the
    /// container and process listening behind it.
    #[arg(long, conflicts_with_all = ["live", "group_by"])]
    pub mappings: bool,
}

/// `tracer replay FILE`: the output flags of `watch`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The capture (`tracer watch --record FILE`).
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}
