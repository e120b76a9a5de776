//! The sockets that existed before tracer started, as data: what the kernel's sock_diag dump
//! and the `/proc/PID/fd` walk found (kernel::snapshot fills it), merged into the socket table.
use std::{collections::HashMap, net::IpAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::table::Owner;

/// One socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapSocket {
    pub netns: u32,
    pub protocol: u8,
    pub family: u16,
    pub laddr: [u8; 16],
    pub lport: u16,
    pub raddr: [u8; 16],
    pub rport: u16,
    /// The kernel's TCP state number (UDP: ESTABLISHED when connected, else CLOSE).
    pub state: u8,
    pub uid: u32,
    /// The socket's inode (0 for TIME_WAIT sockets, which no process holds).
    pub inode: u32,
    /// What `ss` shows as Recv-Q and Send-Q: for a listener, the connections waiting in its
    /// accept queue and the backlog; otherwise bytes not yet read and not yet acknowledged.
    #[serde(default)]
    pub recv_q: u32,
    #[serde(default)]
    pub send_q: u32,
    /// Packets the socket dropped (`sk_drops`; a listener's are connections refused while its
    /// accept queue was full), when asked for.
    #[serde(default)]
    pub drops: Option<u32>,
}

/// A network namespace the snapshot looked into.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapNetns {
    pub inode: u32,
    /// Where it was found (a /run/netns name or a /proc/PID/ns/net path; any bytes).
    #[serde(with = "path_bytes")]
    pub path: PathBuf,
    pub port_range: Option<(u16, u16)>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub sockets: Vec<SnapSocket>,
    /// Socket inode → every process holding it (fork and fd passing give several).
    pub owners: HashMap<u32, Vec<Owner>>,
    pub namespaces: Vec<SnapNetns>,
    /// How long the dump and the /proc walk took.
    pub took: Duration,
}

impl Snapshot {
    /// Keeps the sockets `keep` accepts (given each socket's holders), and only their owners.
    pub fn retain(&mut self, keep: impl Fn(&SnapSocket, &[Owner]) -> bool) {
        let owners = &self.owners;
        self.sockets.retain(|s| {
            let holders = owners.get(&s.inode).map_or(&[][..], Vec::as_slice);
            keep(s, holders)
        });
        let inodes: std::collections::HashSet<u32> = self.sockets.iter().map(|s| s.inode).collect();
        self.owners.retain(|inode, _| inodes.contains(inode));
    }
}

/// The event records' address layout: IPv4 in the first four bytes.
pub fn addr_bytes(addr: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

/// A path as its bytes: a name any user chose need not be UTF-8, and serde's own form of a
/// path refuses those.
mod path_bytes {
    use std::{ffi::OsString, os::unix::ffi::OsStringExt, path::PathBuf};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(path: &std::path::Path, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(path.as_os_str().as_encoded_bytes())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Vec::<u8>::deserialize(d).map(|b| PathBuf::from(OsString::from_vec(b)))
    }
}
