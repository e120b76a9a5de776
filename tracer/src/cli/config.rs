//! The validated configurations the commands run from: plain data, checked for what can be
//! checked without looking at the system (names of processes, namespaces and users are
//! resolved by the commands).
use tracer_common::{KernelFilter, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, MAX_PORT_FILTERS};

use super::*;
use crate::error::{Error, Result};
use crate::model::ports::RowFilter;
pub use crate::model::types::{Health, KernelPath};

impl WatchNatArgs {
    fn validate(self) -> Result<Option<(NatTargets, NatSourceChoice)>> {
        let targets = if self.nat_all_netns {
            NatTargets::All
        } else if !self.nat_netns.is_empty() {
            NatTargets::Named(self.nat_netns)
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

/// Which network namespaces NAT is watched in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatTargets {
    /// tracer's own.
    Host,
    /// Namespaces as the user named them (a /run/netns name or a path); the command
    /// resolves them.
    Named(Vec<String>),
    /// Every namespace, including ones that appear later, up to `--max-netns` at once (each
    /// costs a conntrack thread, a netlink socket and eight netfilter links; any user can
    /// create namespaces).
    All,
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
    /// `--who`: only bindings for this endpoint.
    pub who: Option<crate::model::nat::who::Who>,
    /// `--agent`: ask the agent there (`HOST:PORT`) about `who` instead of watching.
    pub agent: Option<String>,
}

impl NatArgs {
    pub fn validate(self) -> Result<NatConfig> {
        let targets = if self.all_netns {
            NatTargets::All
        } else if !self.netns.is_empty() {
            NatTargets::Named(self.netns)
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
            who: self.who,
            agent: self.agent,
        })
    }
}

/// `--nat-history` and `--nat-history-max`: (nanoseconds, entries).
fn nat_history(nat: &WatchNatArgs) -> Result<(u64, usize)> {
    const MAX_S: u64 = 7 * 86_400;
    const MAX_ENTRIES: usize = 1 << 20;
    if nat.nat_history > MAX_S {
        return Err(Error::Invalid(format!(
            "--nat-history {}: at most {MAX_S} seconds (a week)",
            nat.nat_history
        )));
    }
    if nat.nat_history_max > MAX_ENTRIES {
        return Err(Error::Invalid(format!(
            "--nat-history-max {}: at most {MAX_ENTRIES} (each costs about half a KiB)",
            nat.nat_history_max
        )));
    }
    Ok((nat.nat_history * 1_000_000_000, nat.nat_history_max))
}

/// What `trace` follows.
#[derive(Debug, Clone)]
pub enum TraceTarget {
    /// Start this command as `user` (`--user`; None: the user behind sudo). The command
    /// resolves the user.
    Command {
        argv: Vec<String>,
        user: Option<String>,
    },
    /// These processes and their descendants (now and later).
    Pids(Vec<u32>),
    Comm(String),
}

#[derive(Debug, Clone)]
pub struct TraceConfig {
    pub json: bool,
    pub explain: bool,
    pub lang: crate::i18n::Lang,
    pub target: TraceTarget,
}

impl TraceArgs {
    pub fn validate(self) -> Result<TraceConfig> {
        let target = if !self.command.is_empty() {
            TraceTarget::Command {
                argv: self.command,
                user: self.user,
            }
        } else if !self.pids.is_empty() {
            TraceTarget::Pids(self.pids)
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
            lang: match self.lang.as_deref() {
                Some(code) => crate::i18n::Lang::parse(code).unwrap_or(crate::i18n::Lang::En),
                None => crate::i18n::Lang::from_env(),
            },
            target,
        })
    }
}

/// A validated `ports` configuration.
#[derive(Debug, Clone)]
pub struct PortsConfig {
    pub live: bool,
    pub json: bool,
    /// `--mappings`.
    pub mappings: bool,
    pub filter: RowFilter,
    /// Where to look; the command resolves it (and sets `filter.netns`).
    pub netns: NetnsChoice,
    pub sort: SortKey,
    pub reverse: bool,
    pub group_by: Option<GroupBy>,
}

impl PortsArgs {
    pub fn validate(self) -> Result<PortsConfig> {
        let container = container_want(self.container, self.pod)?;
        let netns = match (self.netns, self.all_netns) {
            (Some(spec), _) => NetnsChoice::Named(spec),
            // A container has its own namespace, as a rule.
            (None, all) if all || container.is_some() || self.mappings => NetnsChoice::All,
            (None, _) => NetnsChoice::Own,
        };
        Ok(PortsConfig {
            live: self.live,
            json: self.json,
            mappings: self.mappings,
            filter: RowFilter {
                pids: self.pids,
                ports: self.ports,
                proto: self.proto.map(|p| match p {
                    Proto::Tcp => crate::model::types::Proto::Tcp,
                    Proto::Udp => crate::model::types::Proto::Udp,
                }),
                listening: self.listening,
                time_wait: self.time_wait,
                netns: None,
                text: String::new(),
                who: self.who,
                container,
            },
            netns,
            sort: self.sort,
            reverse: self.reverse,
            group_by: self.group_by,
        })
    }
}

/// What `watch` and `serve` share the loop for, and where they differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// One line (or JSON record) per event.
    Watch,
    /// No per-event output: the socket table and the metrics only.
    Serve,
}

/// Which network namespaces `ports` looks into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsChoice {
    /// tracer's own.
    Own,
    /// Every namespace.
    All,
    /// A /run/netns name or a path, as given.
    Named(String),
}

/// A validated `watch` configuration.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub output: OutputOptions,
    /// What the kernel filters (ports, protocol, family, comm, pids); its `netns` and the
    /// process list are filled in when the command resolves `netns` and `pids`.
    pub kernel_filter: KernelFilter,
    /// The `--pid` processes as given (the command adds their descendants).
    pub pids: Vec<u32>,
    pub comm: Option<String>,
    /// `--container` / `--pod`.
    pub container: Option<crate::model::filter::ContainerWant>,
    pub ringbuf_bytes: u32,
    pub duration: Option<std::time::Duration>,
    /// `--netns`, as given (None: every namespace).
    pub netns: Option<String>,
    /// Serve Prometheus metrics here.
    pub metrics: Option<std::net::SocketAddr>,
    pub mode: WatchMode,
    pub max_listen_ports: usize,
    /// Also watch NAT: where, and from which source.
    pub nat: Option<(NatTargets, NatSourceChoice)>,
    /// `--nat-all-netns`: namespaces followed at once, at most.
    pub nat_max_netns: usize,
    /// `--record`: the capture to write.
    pub record: Option<std::path::PathBuf>,
    /// `--who`: only sockets and NAT bindings for this endpoint.
    pub who: Option<crate::model::nat::who::Who>,
    /// How long and how many ended NAT bindings are kept for `--who` questions: (ns, entries).
    pub nat_history: (u64, usize),
    /// Socket hooks (the default) or syscall tracepoints (`--syscalls`, or events only
    /// syscalls give).
    pub path: KernelPath,
    /// Retransmits, resets and drops: on by default, required when named in `--events`.
    pub health: Health,
}

impl WatchArgs {
    pub fn validate(self) -> Result<WatchConfig> {
        let mut config = self.filters.validate(&self.output.events)?;
        config.output = self.output.validate();
        config.metrics = self.metrics;
        config.record = self.record;
        config.who = self.who;
        config.nat_max_netns = max_netns(self.nat.max_netns)?;
        config.nat_history = nat_history(&self.nat)?;
        config.nat = self.nat.validate()?;
        Ok(config)
    }
}

impl ServeArgs {
    pub fn validate(self) -> Result<WatchConfig> {
        let mut config = self.filters.validate(&[])?;
        if config.container.is_some() {
            return Err(Error::Invalid(
                "serve: --container and --pod select events to show; serve exports every container (its metrics carry the container in a label)".into(),
            ));
        }
        config.metrics = Some(self.listen);
        config.mode = WatchMode::Serve;
        config.max_listen_ports = self.max_listen_ports;
        config.nat_max_netns = max_netns(self.nat.max_netns)?;
        config.nat_history = nat_history(&self.nat)?;
        config.nat = self.nat.validate()?;
        Ok(config)
    }
}

/// Events only the syscall path reports: the socket path sees no close(2) or shutdown(2),
/// and names every UDP datagram with an address sendmsg/recvmsg, whichever call made it.
pub const SYSCALL_ONLY: &[&str] = &["close", "shutdown", "sendto", "recvfrom"];

/// Events of the TCP health hooks (either path).
pub const HEALTH_EVENTS: &[&str] = &["retransmit", "reset", "drop"];

/// `--container` and `--pod`, checked: text a terminal can show, of a sane length.
fn container_want(
    container: Option<String>,
    pod: Option<String>,
) -> Result<Option<crate::model::filter::ContainerWant>> {
    use crate::model::filter::ContainerWant;
    let checked = |flag: &str, v: &str| -> Result<()> {
        if v.is_empty() || v.len() > 253 || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(Error::Invalid(format!(
                "{flag} {}: 1 to 253 printable characters without spaces",
                crate::text::escape(v)
            )));
        }
        Ok(())
    };
    Ok(match (container, pod) {
        (Some(_), Some(_)) => {
            return Err(Error::Invalid("--container and --pod: give one".into()));
        }
        (Some(c), None) => {
            checked("--container", &c)?;
            Some(ContainerWant::Container(c))
        }
        (None, Some(p)) => {
            checked("--pod", &p)?;
            if !p.contains('/') && p.len() != 36 {
                return Err(Error::Invalid(format!(
                    "--pod {}: NAMESPACE/NAME, or the pod's UID",
                    crate::text::escape(&p)
                )));
            }
            Some(ContainerWant::Pod(p))
        }
        (None, None) => None,
    })
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
        if let Some(comm) = &self.comm {
            if comm.is_empty() || comm.len() > 15 {
                return Err(bad(format!(
                    "--comm {comm:?}: a command name is 1 to 15 bytes (the kernel truncates longer names)"
                )));
            }
            filter.by_comm = 1;
            filter.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        }
        filter.by_pid = u8::from(!self.pids.is_empty());
        let container = container_want(self.container, self.pod)?;
        // The agent judges each cgroup once its container is known; the kernel then drops the
        // calls of those not selected.
        filter.by_cgroup = u8::from(container.is_some());
        let udp_events = ["sendto", "recvfrom", "sendmsg", "recvmsg"];
        let wants_udp_data =
            events.is_empty() || events.iter().any(|e| udp_events.contains(&e.as_str()));
        filter.udp_data = u8::from(wants_udp_data && filter.protocol != IPPROTO_TCP);
        let ringbuf_bytes = ringbuf_bytes(self.ringbuf_kib)?;
        let duration = duration(self.duration)?;
        let path = if self.syscalls || events.iter().any(|e| SYSCALL_ONLY.contains(&e.as_str())) {
            KernelPath::Syscalls
        } else {
            KernelPath::Sockets
        };
        let names_health = events.iter().any(|e| HEALTH_EVENTS.contains(&e.as_str()));
        let health = if self.no_health {
            if names_health {
                return Err(bad(
                    "--no-health leaves off the retransmit, reset and drop events --events asks for"
                        .into(),
                ));
            }
            Health::Off
        } else if events.is_empty() {
            Health::IfPresent
        } else if names_health {
            Health::Required
        } else {
            Health::Off
        };
        Ok(WatchConfig {
            output: OutputOptions {
                json: false,
                color: false,
                events: Vec::new(),
                group_by: None,
            },
            kernel_filter: filter,
            pids: self.pids,
            comm: self.comm,
            container,
            ringbuf_bytes,
            duration,
            netns: self.netns,
            metrics: None,
            mode: WatchMode::Watch,
            max_listen_ports: 64,
            nat_max_netns: DEFAULT_MAX_NETNS,
            nat: None,
            record: None,
            who: None,
            nat_history: (0, 0),
            path,
            health,
        })
    }
}

/// A validated `replay`.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub file: std::path::PathBuf,
    pub output: OutputOptions,
}

/// How `watch` and `replay` print.
#[derive(Debug, Clone)]
pub struct OutputOptions {
    pub json: bool,
    pub color: bool,
    pub events: Vec<String>,
    pub group_by: Option<GroupBy>,
}

impl OutputArgs {
    /// Colour only on a terminal, and never with JSON.
    fn validate(self) -> OutputOptions {
        let color = !self.no_color && !self.json && {
            use std::io::IsTerminal;
            std::io::stdout().is_terminal()
        };
        OutputOptions {
            json: self.json,
            color,
            events: self.events,
            group_by: self.group_by,
        }
    }
}

impl ReplayArgs {
    pub fn validate(self) -> Result<ReplayConfig> {
        Ok(ReplayConfig {
            file: self.file,
            output: self.output.validate(),
        })
    }
}

/// A validated `lesson` configuration.
pub struct LessonConfig {
    /// None: list the lessons.
    pub name: Option<String>,
    pub lang: crate::i18n::Lang,
    pub json: bool,
    /// Write what the run gathered here.
    pub record: Option<std::path::PathBuf>,
    /// Show this recording instead of running.
    pub replay: Option<std::path::PathBuf>,
}
