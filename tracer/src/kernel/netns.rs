//! Network namespaces: resolving `--netns NAME|PATH` to the namespace's inode, and reading a
//! namespace's `ip_local_port_range` from inside it.
use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

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

/// Reads `net.ipv4.ip_local_port_range` as seen inside the namespace `ns_file` names. Net
/// sysctls answer for the reading thread's namespace, so a short-lived thread enters it.
pub fn port_range_in(ns_file: &Path) -> Result<(u16, u16)> {
    let ns_file = ns_file.to_path_buf();
    let handle = std::thread::spawn(move || -> Result<(u16, u16)> {
        let file = fs::File::open(&ns_file)
            .map_err(|e| Error::io(format!("opening {}", ns_file.display()), e))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
            Error::io(
                format!("entering {}", ns_file.display()),
                std::io::Error::from(e),
            )
        })?;
        read_port_range()
    });
    handle.join().unwrap_or_else(|_| {
        Err(Error::io(
            "port range reader",
            std::io::Error::other("panicked"),
        ))
    })
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
