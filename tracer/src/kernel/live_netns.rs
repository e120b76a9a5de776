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
/// namespace, from /proc/self/mountinfo (read as bytes: see [`super::mountinfo`]).
fn nsfs_mounts() -> impl Iterator<Item = PathBuf> {
    super::mountinfo::mounts()
        .unwrap_or_default()
        .into_iter()
        .filter(is_netns_mount)
        .map(|m| m.mount_point)
}

fn is_netns_mount(m: &super::mountinfo::Mount) -> bool {
    m.fs_type == b"nsfs" && m.root.starts_with(b"net:[")
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
        let text = b"612 29 0:4 net:[4026532301] /run/netns/a\\040b rw shared:5 - nsfs nsfs rw\n\
            25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n\
            613 29 0:4 mnt:[4026532301] /x rw - nsfs nsfs rw\n";
        let found: Vec<PathBuf> = super::super::mountinfo::parse(text)
            .into_iter()
            .filter(is_netns_mount)
            .map(|m| m.mount_point)
            .collect();
        assert_eq!(found, vec![PathBuf::from("/run/netns/a b")]);
    }
}
