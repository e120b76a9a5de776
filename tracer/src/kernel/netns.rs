//! Network namespaces: resolving `--netns NAME|PATH` to the namespace's inode (only a real
//! network-namespace file is accepted), and reading a namespace's `ip_local_port_range` from
//! inside it.
use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::live_netns::NetnsIndex;
use crate::error::{Error, Result};

/// `NAME` (as made by `ip netns add`, under /run/netns) or a path such as /proc/PID/ns/net:
/// its path and inode, once [`open`] has checked that it is a network namespace.
pub fn resolve(spec: &str) -> Result<(PathBuf, u32)> {
    let path = if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        Path::new("/run/netns").join(spec)
    };
    let file = open(&path, spec)?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok((path, meta.ino() as u32))
}

/// Opens a network namespace file, refusing anything else with a clear error (`spec` is what
/// the user called it). Checked by path before opening (a device or FIFO is never opened),
/// then on the open file (the answer for what was really opened): the filesystem must be
/// nsfs and `NS_GET_NSTYPE` must say `CLONE_NEWNET`. Opened non-blocking, so a FIFO put there
/// in between cannot hang the open.
pub fn open(path: &Path, spec: &str) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let not_netns = |what: String| Error::NotNetns {
        spec: spec.to_string(),
        what,
    };
    let unreadable = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NoSuchNetns(spec.to_string()),
        _ => Error::io(format!("network namespace {spec:?}"), e),
    };
    let meta = fs::metadata(path).map_err(unreadable)?;
    // NSFS_MAGIC (0x6e736673): the filesystem of /proc/PID/ns/* and bind mounts of them.
    let on_nsfs =
        |st: nix::sys::statfs::Statfs| st.filesystem_type() == nix::sys::statfs::NSFS_MAGIC;
    match nix::sys::statfs::statfs(path) {
        Ok(st) if on_nsfs(st) => {}
        _ => return Err(not_netns(describe(&meta))),
    }
    // Non-blocking: a FIFO put there since the check cannot hang the open.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(unreadable)?;
    match nix::sys::statfs::fstatfs(&file) {
        Ok(st) if on_nsfs(st) => {}
        _ => {
            let what = file.metadata().map(|m| describe(&m)).unwrap_or_default();
            return Err(not_netns(what));
        }
    }
    match namespace_type(&file) {
        Some(libc::CLONE_NEWNET) => Ok(file),
        Some(kind) => Err(not_netns(format!("a {} namespace", namespace_name(kind)))),
        None => Err(not_netns("a namespace file of unknown type".into())),
    }
}

/// `ioctl(NS_GET_NSTYPE)`: the `CLONE_NEW*` flag of the namespace `file` refers to.
fn namespace_type(file: &fs::File) -> Option<i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: an ioctl without arguments on a descriptor we own.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    (kind >= 0).then_some(kind)
}

fn namespace_name(kind: i32) -> &'static str {
    match kind {
        libc::CLONE_NEWNS => "mount",
        libc::CLONE_NEWUTS => "UTS",
        libc::CLONE_NEWIPC => "IPC",
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWPID => "PID",
        libc::CLONE_NEWCGROUP => "cgroup",
        libc::CLONE_NEWTIME => "time",
        _ => "other",
    }
}

/// What a non-namespace file is, for the error message.
fn describe(meta: &fs::Metadata) -> String {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let kind = if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "a regular file"
    };
    kind.to_string()
}

/// The inode of the namespace this process runs in.
pub fn own_inode() -> Result<u32> {
    fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino() as u32)
        .map_err(|e| Error::io("reading /proc/self/ns/net", e))
}

/// Reads `net.ipv4.ip_local_port_range` as seen inside the namespace `ns` (an open handle to
/// it). Net sysctls answer for the reading thread's namespace, so a short-lived thread enters
/// it.
pub fn port_range_in(ns: fs::File) -> Result<Sysctls> {
    run_in(ns, read_sysctls)
}

/// A namespace's `ip_local_port_range` and `tcp_tw_reuse` (None where unreadable).
type Sysctls = ((u16, u16), Option<u8>);

/// This namespace's `ip_local_port_range` and `tcp_tw_reuse`.
fn read_sysctls() -> Result<Sysctls> {
    let tw_reuse = fs::read_to_string("/proc/sys/net/ipv4/tcp_tw_reuse")
        .ok()
        .and_then(|t| t.trim().parse().ok());
    Ok((read_port_range()?, tw_reuse))
}

/// Runs `f` on a short-lived thread inside namespace `ns` (netlink sockets and net sysctls
/// answer for the namespace of the thread that opens them; the caller's own thread stays put).
pub fn run_in<T: Send + 'static>(
    ns: fs::File,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io("entering a network namespace", std::io::Error::from(e)))?;
        f()
    })
    .join()
    .unwrap_or_else(|_| {
        Err(Error::io(
            "network namespace worker",
            std::io::Error::other("panicked"),
        ))
    })
}

/// Paths that name network namespaces: the names under /run/netns (a namespace there may have
/// no process left), then every process's `/proc/PID/ns/net`. Many name the same namespace.
pub fn candidate_paths() -> impl Iterator<Item = PathBuf> {
    let named = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    let processes = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"));
    named.chain(processes)
}

/// Per-namespace `ip_local_port_range`, read once per namespace and refreshed after a few
/// seconds so a `sysctl -w` shows up. Bounded: namespaces that are gone are forgotten by
/// [`PortRangeCache::prune`], and past [`MAX_KNOWN`] entries the stale ones go. Finding a way
/// into a namespace costs one scan of /proc per second at most, shared by every namespace
/// looked up in that second (not a scan per namespace: any user can create thousands).
pub struct PortRangeCache {
    own: u32,
    /// Range, `tcp_tw_reuse` and when they were read (coarse monotonic time: looked up for
    /// every event shown).
    known: foldhash::HashMap<u32, (Option<Sysctls>, Duration)>,
    index: Option<(NetnsIndex, Instant)>,
}

const PORT_RANGE_TTL: Duration = Duration::from_secs(5);

/// The kernel's coarse monotonic clock (a tick's resolution, a fraction of `Instant::now`'s
/// cost): ample for a 5 s expiry checked once per event.
fn coarse_now() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .map(Duration::from)
        .unwrap_or_default()
}
/// How old the namespace index may be before a lookup that misses it scans again.
const INDEX_TTL: Duration = Duration::from_secs(1);
/// Namespaces whose range is remembered, at most (beyond, expired entries are dropped).
pub const MAX_KNOWN: usize = 16_384;

impl Default for PortRangeCache {
    fn default() -> Self {
        PortRangeCache {
            own: own_inode().unwrap_or(0),
            known: foldhash::HashMap::default(),
            index: None,
        }
    }
}

impl PortRangeCache {
    /// The range of namespace `inode`; `pid` (the socket's owner) is the first place to look
    /// for a way into it.
    pub fn get(&mut self, inode: u32, pid: Option<u32>) -> Option<(u16, u16)> {
        if inode == 0 {
            return None;
        }
        let now = coarse_now();
        if let Some((read, at)) = self.known.get(&inode) {
            if now.saturating_sub(*at) < PORT_RANGE_TTL {
                return read.map(|r| r.0);
            }
        }
        let range = if inode == self.own {
            read_sysctls()
        } else {
            match self.open_handle(inode, pid) {
                Some(ns) => port_range_in(ns),
                None => Err(Error::NoSuchNetns(format!("inode {inode}"))),
            }
        };
        let range = range
            .inspect_err(|e| match e {
                // Namespaces come and go; one that is gone has no range to show.
                Error::NoSuchNetns(_) => tracing::debug!("netns {inode} is gone"),
                e => tracing::warn!("ip_local_port_range of netns {inode}: {e}"),
            })
            .ok();
        if self.known.len() >= MAX_KNOWN {
            self.known
                .retain(|_, (_, at)| now.saturating_sub(*at) < PORT_RANGE_TTL);
            if self.known.len() >= MAX_KNOWN {
                self.known.clear();
            }
        }
        self.known.insert(inode, (range, now));
        range.map(|r| r.0)
    }

    /// Namespace `inode`'s `tcp_tw_reuse`, as read with its range by [`PortRangeCache::get`].
    pub fn tw_reuse(&self, inode: u32) -> Option<u8> {
        self.known.get(&inode)?.0?.1
    }

    /// Forgets the namespaces that are gone and returns which of `candidates` are gone (the
    /// caller forgets them too). One scan of /proc: call it every few seconds.
    pub fn prune(&mut self, candidates: &[u32]) -> Vec<u32> {
        let index = NetnsIndex::scan();
        let own = self.own;
        let alive = |ns: u32| ns == own || index.contains(ns);
        self.known.retain(|ns, _| alive(*ns));
        let gone = candidates
            .iter()
            .copied()
            .filter(|&ns| !alive(ns))
            .collect();
        self.index = Some((index, Instant::now()));
        gone
    }

    /// An open handle to namespace `inode`: from the owner's `/proc/PID/ns/net`, else from the
    /// namespace index (rescanned when older than a second). Opened, not just looked at: a
    /// process may exit between the two, and the open fd keeps the namespace.
    /// The TCP listeners of namespace `inode` (queues, backlogs, drops); `pid` holds a socket
    /// there, the first way in to try.
    pub fn listeners(
        &mut self,
        inode: u32,
        pid: Option<u32>,
    ) -> Result<Vec<crate::model::snapshot::SnapSocket>> {
        use crate::kernel::snapshot::listeners_here;
        if inode == self.own {
            return listeners_here(inode);
        }
        let ns = self
            .open_handle(inode, pid)
            .ok_or_else(|| Error::NoSuchNetns(format!("inode {inode}")))?;
        run_in(ns, move || listeners_here(inode))
    }

    fn open_handle(&mut self, inode: u32, pid: Option<u32>) -> Option<fs::File> {
        let opens_it = |path: &Path| {
            open(path, "")
                .ok()
                .filter(|f| f.metadata().is_ok_and(|m| m.ino() as u32 == inode))
        };
        if let Some(f) = pid.and_then(|pid| opens_it(&PathBuf::from(format!("/proc/{pid}/ns/net"))))
        {
            return Some(f);
        }
        let fresh = self
            .index
            .as_ref()
            .is_some_and(|(index, at)| index.contains(inode) || at.elapsed() < INDEX_TTL);
        if !fresh {
            self.index = Some((NetnsIndex::scan(), Instant::now()));
        }
        let (index, _) = self.index.as_ref()?;
        index.path(inode).and_then(opens_it)
    }
}

pub fn read_port_range() -> Result<(u16, u16)> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = fs::read_to_string(path).map_err(|e| Error::io(format!("reading {path}"), e))?;
    parse_port_range(&text)
        .ok_or_else(|| Error::io(format!("parsing {path}"), std::io::Error::other(text)))
}

pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_parses() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range(""), None);
    }

    #[test]
    fn missing_netns_is_an_error() {
        assert!(matches!(
            resolve("tracer-no-such-netns"),
            Err(Error::NoSuchNetns(_))
        ));
    }

    /// What `resolve` says about `spec`: `Ok` or the kind of file it refused.
    fn refused(spec: &str) -> Option<String> {
        match resolve(spec) {
            Ok(_) => None,
            Err(Error::NotNetns { what, .. }) => Some(what),
            Err(e) => Some(format!("other error: {e}")),
        }
    }

    #[test]
    fn only_network_namespace_files_are_accepted() {
        assert_eq!(refused("/proc/self/ns/net"), None);
        assert_eq!(refused("/etc/passwd").as_deref(), Some("a regular file"));
        assert_eq!(refused("/proc").as_deref(), Some("a directory"));
        assert_eq!(refused("/dev/null").as_deref(), Some("a device"));
        assert_eq!(
            refused("/proc/self/ns/mnt").as_deref(),
            Some("a mount namespace")
        );
        assert_eq!(
            refused("/proc/self/ns/uts").as_deref(),
            Some("a UTS namespace")
        );
        // A name is looked up under /run/netns, and is checked the same way (a machine
        // where no namespace was ever named has no /run/netns: then the name is not found).
        if std::path::Path::new("/run/netns").is_dir() {
            assert_eq!(refused("..").as_deref(), Some("a directory"));
        } else {
            let e = refused("..").unwrap();
            assert!(e.contains("not found"), "{e}");
        }
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        // The read end of a pipe, by its /proc path: a FIFO no one will ever write to.
        let (read, _write) = nix::unistd::pipe().unwrap();
        use std::os::fd::AsRawFd;
        let path = format!("/proc/self/fd/{}", read.as_raw_fd());
        assert_eq!(refused(&path).as_deref(), Some("a FIFO"));
    }
}
