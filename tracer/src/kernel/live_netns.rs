//! Which network namespaces exist now, found in one pass: the names under /run/netns, every
//! nsfs bind mount (`ip netns`, container runtimes), every process's `/proc/PID/ns/net`, and
//! tracer's own threads (its NAT helpers enter other namespaces). Used to forget the state of
//! namespaces that are gone and to find a way into one without a scan per namespace.
//!
//! A namespace held only by a socket or an open fd of another process is not found here; the
//! state kept for it is dropped only once it also holds no socket tracer knows of.
use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Namespaces found by one scan: inode → a path that opens it.
#[derive(Debug, Default)]
pub struct NetnsIndex {
    paths: HashMap<u32, PathBuf>,
}

impl NetnsIndex {
    /// Scans now (a stat per process: tens of milliseconds on a host with 10,000 processes;
    /// callers do it every few seconds at most).
    pub fn scan() -> Self {
        let mut index = NetnsIndex::default();
        for path in named().chain(nsfs_mounts()).chain(own_threads()) {
            index.add(path);
        }
        for path in processes() {
            index.add(path);
        }
        index
    }

    fn add(&mut self, path: PathBuf) {
        if let Ok(meta) = fs::metadata(&path) {
            self.paths.entry(meta.ino() as u32).or_insert(path);
        }
    }

    pub fn contains(&self, inode: u32) -> bool {
        self.paths.contains_key(&inode)
    }

    pub fn path(&self, inode: u32) -> Option<&Path> {
        self.paths.get(&inode).map(PathBuf::as_path)
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

fn named() -> impl Iterator<Item = PathBuf> {
    fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
}

/// Mount points of network namespaces (`nsfs`, root `net:[INODE]`) anywhere in tracer's mount
/// namespace, from /proc/self/mountinfo.
fn nsfs_mounts() -> impl Iterator<Item = PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(nsfs_mount_point)
        .collect::<Vec<_>>()
        .into_iter()
}

/// The mount point of a mountinfo line that mounts a network namespace.
fn nsfs_mount_point(line: &str) -> Option<PathBuf> {
    let (left, right) = line.split_once(" - ")?;
    if !right.starts_with("nsfs ") {
        return None;
    }
    let mut fields = left.split(' ');
    let root = fields.nth(3)?;
    let mount_point = fields.next()?;
    root.starts_with("net:[")
        .then(|| PathBuf::from(unescape_mountinfo(mount_point)))
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn own_threads() -> impl Iterator<Item = PathBuf> {
    fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("ns/net"))
}

fn processes() -> impl Iterator<Item = PathBuf> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .as_encoded_bytes()
                .iter()
                .all(u8::is_ascii_digit)
        })
        .map(|e| e.path().join("ns/net"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_its_own_namespace() {
        let own = fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        let index = NetnsIndex::scan();
        assert!(index.contains(own));
        assert!(index.path(own).is_some());
    }

    #[test]
    fn mountinfo_nsfs_lines() {
        let line = "612 29 0:4 net:[4026532301] /run/netns/a\\040b rw shared:5 - nsfs nsfs rw";
        assert_eq!(
            nsfs_mount_point(line),
            Some(PathBuf::from("/run/netns/a b"))
        );
        let other = "25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw";
        assert_eq!(nsfs_mount_point(other), None);
        let mnt = "612 29 0:4 mnt:[4026532301] /x rw - nsfs nsfs rw";
        assert_eq!(nsfs_mount_point(mnt), None);
    }
}
