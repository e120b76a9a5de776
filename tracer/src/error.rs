//! The library's typed error. Each variant's message is the one line a user sees: what is
//! wrong and what to do about it. `anyhow` is used only at the binary's edge.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tracer must run as root (it loads eBPF programs); try: sudo tracer {0}")]
    NotRoot(String),
    #[error("tracefs is not mounted at /sys/kernel/tracing and mounting it failed: {0}")]
    TracefsMount(String),
    #[error("no cgroup v2 hierarchy found in /proc/self/mountinfo; mount one (mount -t cgroup2 none /sys/fs/cgroup/unified)")]
    NoCgroup2,
    #[error("kernel BTF not found at /sys/kernel/btf/vmlinux: this kernel was built without CONFIG_DEBUG_INFO_BTF, which tracer needs to find socket fields")]
    NoBtf,
    #[error("kernel BTF has no {0}: this kernel's layout is not supported")]
    BtfMissing(String),
    #[error("cannot read BTF: {0}")]
    Btf(String),
    #[error("tracepoint {0} is missing from this kernel ({1})")]
    MissingTracepoint(String, String),
    #[error("cannot parse tracepoint format {path}: {reason}")]
    TracepointFormat { path: PathBuf, reason: String },
    #[error("network namespace {0:?} not found: give a name under /run/netns (ip netns add) or a path like /proc/PID/ns/net")]
    NoSuchNetns(String),
    #[error("network namespace {spec:?}: {what}, not a network namespace; give a name under /run/netns (ip netns add) or a path like /proc/PID/ns/net")]
    NotNetns { spec: String, what: String },
    #[error("refusing to run `{0}` as root: pass --user USER to run it as that user (sudo sets SUDO_UID, which tracer uses), or --user root if root is what you mean")]
    TraceAsRoot(String),
    #[error("{0}")]
    Invalid(String),
    #[error("NAT tracing is not available: {0}")]
    NatUnsupported(String),
    #[error("loading the NAT programs: {0}")]
    NatLoad(String),
    #[error("process {0} does not exist")]
    NoSuchPid(u32),
    #[error("this tracer binary was built without its eBPF objects (bpf-linker was missing at build time); run `cargo xtask setup` and rebuild")]
    StubObject,
    #[error("loading eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot serve metrics on {addr}: {source} (another tracer or exporter may be using it; pick another with --listen / --metrics)")]
    MetricsListen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
