//! Network namespaces: resolving `--netns NAME|PATH` to the namespace's inode, and reading a
//! namespace's `ip_local_port_range` from inside it.
use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::live_netns::NetnsIndex;
use crate::error::{Error, Result};

/// `NAME` (as made by `ip netns add`, under /run/netns) or a path such as /proc/PID/ns/net.
pub fn resolve(spec: &str) -> Result<(PathBuf, u32)> {
    let path = if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        Path::new("/run/netns").join(spec)
    };
    match fs::metadata(&path) {
        Ok(meta) => Ok((path, meta.ino() as u32)),
        Err(_) => Err(Error::NoSuchNetns(spec.to_string())),
    }
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
pub fn port_range_in(ns: fs::File) -> Result<(u16, u16)> {
    run_in(ns, read_port_range)
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
    known: HashMap<u32, (Option<(u16, u16)>, Instant)>,
    index: Option<(NetnsIndex, Instant)>,
}

const PORT_RANGE_TTL: Duration = Duration::from_secs(5);
/// How old the namespace index may be before a lookup that misses it scans again.
const INDEX_TTL: Duration = Duration::from_secs(1);
/// Namespaces whose range is remembered, at most (beyond, expired entries are dropped).
pub const MAX_KNOWN: usize = 16_384;

impl Default for PortRangeCache {
    fn default() -> Self {
        PortRangeCache {
            own: own_inode().unwrap_or(0),
            known: HashMap::new(),
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
        if let Some((range, at)) = self.known.get(&inode) {
            if at.elapsed() < PORT_RANGE_TTL {
                return *range;
            }
        }
        let range = if inode == self.own {
            read_port_range()
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
                .retain(|_, (_, at)| at.elapsed() < PORT_RANGE_TTL);
            if self.known.len() >= MAX_KNOWN {
                self.known.clear();
            }
        }
        self.known.insert(inode, (range, Instant::now()));
        range
    }

    /// Forgets the namespaces that are gone, here and in `usage` (whose per-namespace
    /// entries, and so metric series, go with them unless a socket still holds a port there).
    /// One scan of /proc: call it every few seconds. Returns how many namespaces `usage`
    /// forgot.
    pub fn prune(&mut self, usage: &mut crate::model::ephemeral::EphemeralUsage) -> usize {
        let index = NetnsIndex::scan();
        let own = self.own;
        let alive = |ns: u32| ns == own || index.contains(ns);
        self.known.retain(|ns, _| alive(*ns));
        let forgotten = usage.retain_namespaces(alive);
        self.index = Some((index, Instant::now()));
        forgotten
    }

    /// An open handle to namespace `inode`: from the owner's `/proc/PID/ns/net`, else from the
    /// namespace index (rescanned when older than a second). Opened, not just looked at: a
    /// process may exit between the two, and the open fd keeps the namespace.
    fn open_handle(&mut self, inode: u32, pid: Option<u32>) -> Option<fs::File> {
        let opens_it = |path: &Path| {
            fs::File::open(path)
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
}
