//! The sockets that exist right now, and who holds them: a sock_diag netlink dump (TCP and UDP,
//! IPv4 and IPv6) inside each network namespace, joined to the `socket:[inode]` links under
//! `/proc/PID/fd`. `tracer ports` prints it; `watch` and `ports --live` merge it into the live
//! socket table so sockets that predate tracer have owners.
use std::{collections::HashMap, fs, os::unix::fs::MetadataExt, path::PathBuf, time::Instant};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    inet::{nlas::Nla, ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};
use tracer_common::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};

use crate::error::{Error, Result};
use crate::kernel::netns;
use crate::model::{
    snapshot::{addr_bytes, SnapNetns, SnapSocket, Snapshot},
    table::Owner,
};

/// Which namespaces to look into.
#[derive(Clone, Debug)]
pub enum Scope {
    /// Every namespace a process or a /run/netns name holds.
    All,
    /// One namespace (`--netns`).
    One(PathBuf),
}

/// Takes the snapshot.
pub fn take(scope: &Scope) -> Result<Snapshot> {
    take_with(scope, true)
}

/// The sockets only, without walking /proc for their owners (checking the table against the
/// kernel after lost events).
pub fn take_sockets(scope: &Scope) -> Result<Snapshot> {
    take_with(scope, false)
}

fn take_with(scope: &Scope, with_owners: bool) -> Result<Snapshot> {
    let started = Instant::now();
    let mut snapshot = Snapshot::default();
    let own = netns::own_inode()?;
    let targets = match scope {
        Scope::All => every_netns(),
        Scope::One(path) => {
            let meta =
                fs::metadata(path).map_err(|_| Error::NoSuchNetns(path.display().to_string()))?;
            vec![(meta.ino() as u32, path.clone())]
        }
    };
    for (inode, path) in targets {
        let result = if inode == own {
            dump_here(inode).map(|s| (s, netns::read_port_range().ok()))
        } else {
            // Checked and non-blocking: the path may have become anything since it was found.
            netns::open(&path, &path.display().to_string())
                .map_err(|_| Error::NoSuchNetns(path.display().to_string()))
                .and_then(|ns| {
                    netns::run_in(ns, move || {
                        Ok((dump_here(inode)?, netns::read_port_range().ok()))
                    })
                })
        };
        match result {
            Ok((sockets, port_range)) => {
                snapshot.sockets.extend(sockets);
                snapshot.namespaces.push(SnapNetns {
                    inode,
                    path,
                    port_range,
                });
            }
            // A namespace can vanish between listing and entering it; only the one asked
            // for by name must exist.
            Err(e) if matches!(scope, Scope::One(_)) => return Err(e),
            Err(e) => tracing::debug!("netns {}: {e}", path.display()),
        }
    }
    if with_owners {
        snapshot.owners = socket_owners();
    }
    snapshot.took = started.elapsed();
    Ok(snapshot)
}

/// Every distinct network namespace, tracer's own first.
fn every_netns() -> Vec<(u32, PathBuf)> {
    let mut seen = std::collections::HashSet::new();
    std::iter::once(PathBuf::from("/proc/self/ns/net"))
        .chain(netns::candidate_paths())
        .filter_map(|path| {
            let ino = fs::metadata(&path).ok()?.ino() as u32;
            seen.insert(ino).then_some((ino, path))
        })
        .collect()
}

/// A sock_diag socket of the calling thread's namespace.
fn diag_socket() -> Result<Socket> {
    let mut socket =
        Socket::new(NETLINK_SOCK_DIAG).map_err(|e| Error::io("sock_diag socket", e))?;
    socket
        .bind_auto()
        .map_err(|e| Error::io("binding the sock_diag socket", e))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| Error::io("connecting the sock_diag socket", e))?;
    Ok(socket)
}

/// Dumps TCP and UDP sockets of both families in the calling thread's namespace.
fn dump_here(netns: u32) -> Result<Vec<SnapSocket>> {
    let mut socket = diag_socket()?;
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
            dump_one(&mut socket, netns, family, protocol, Dump::All, &mut out)?;
        }
    }
    Ok(out)
}

/// The TCP listeners of the calling thread's namespace, with their accept queue (`recv_q`),
/// backlog (`send_q`) and the packets each dropped (`drops`: SYNs and ACKs refused while its
/// queue was full, as `ss -m` shows them). What `watch` reads every few seconds.
pub fn listeners_here(netns: u32) -> Result<Vec<SnapSocket>> {
    let mut socket = diag_socket()?;
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        dump_one(
            &mut socket,
            netns,
            family,
            IPPROTO_TCP,
            Dump::Listeners,
            &mut out,
        )?;
    }
    Ok(out)
}

/// What a dump asks the kernel for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dump {
    All,
    /// Listening sockets only, with their memory counters (drops).
    Listeners,
}

fn dump_one(
    socket: &mut Socket,
    netns: u32,
    family: u16,
    protocol: u8,
    what: Dump,
    out: &mut Vec<SnapSocket>,
) -> Result<()> {
    let io = |what: &str, e| Error::io(format!("sock_diag {what}"), e);
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family: family as u8,
            protocol,
            extensions: match what {
                Dump::All => ExtensionFlags::empty(),
                Dump::Listeners => ExtensionFlags::SKMEMINFO,
            },
            states: match what {
                Dump::All => StateFlags::all(),
                Dump::Listeners => StateFlags::LISTEN,
            },
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0).map_err(|e| io("request", e))?;
    let mut recv = vec![0u8; 64 * 1024];
    loop {
        let size = socket
            .recv(&mut &mut recv[..], 0)
            .map_err(|e| io("receive", e))?;
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&recv[offset..size])
                .map_err(|e| io("decode", std::io::Error::other(e.to_string())))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    if let Some(s) = convert(netns, protocol, &response) {
                        out.push(s);
                    }
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(io(
                        "dump",
                        e.code
                            .map(|c| std::io::Error::from_raw_os_error(-c.get()))
                            .unwrap_or_else(|| std::io::Error::other("error")),
                    ))
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// The kernel's request sockets (TCP_NEW_SYN_RECV) are half-open handshakes, not sockets
/// anybody holds.
const TCP_NEW_SYN_RECV: u8 = 12;

fn convert(netns: u32, protocol: u8, r: &InetResponse) -> Option<SnapSocket> {
    let h = &r.header;
    if protocol == IPPROTO_TCP && h.state == TCP_NEW_SYN_RECV {
        return None;
    }
    let id = &h.socket_id;
    Some(SnapSocket {
        netns,
        protocol,
        family: u16::from(h.family),
        laddr: addr_bytes(id.source_address),
        lport: id.source_port,
        raddr: addr_bytes(id.destination_address),
        rport: id.destination_port,
        state: h.state,
        uid: h.uid,
        inode: h.inode,
        recv_q: h.recv_queue,
        send_q: h.send_queue,
        drops: r.nlas.iter().find_map(|nla| match nla {
            Nla::MemInfo(m) => Some(m.drops),
            _ => None,
        }),
    })
}

/// Socket inode → the processes whose fd tables hold it, from `/proc/PID/fd`. Processes that
/// exit mid-walk, or whose fds we may not read, are skipped.
pub fn socket_owners() -> HashMap<u32, Vec<Owner>> {
    let mut owners: HashMap<u32, Vec<Owner>> = HashMap::new();
    let Ok(all) = procfs::process::all_processes() else {
        return owners;
    };
    for process in all.flatten() {
        let Ok(fds) = process.fd() else { continue };
        let mut owner = None;
        for fd in fds.flatten() {
            let procfs::process::FDTarget::Socket(inode) = fd.target else {
                continue;
            };
            let owner = *owner.get_or_insert_with(|| owner_of(&process));
            let holders = owners.entry(inode as u32).or_default();
            if !holders.iter().any(|o| o.pid == owner.pid) {
                holders.push(owner);
            }
        }
    }
    owners
}

fn owner_of(process: &procfs::process::Process) -> Owner {
    // Bytes, not text: a name any user set need not be UTF-8.
    let mut comm = [0u8; 16];
    if let Ok(name) = fs::read(format!("/proc/{}/comm", process.pid)) {
        let name = name.strip_suffix(b"\n").unwrap_or(&name);
        let n = name.len().min(15);
        comm[..n].copy_from_slice(&name[..n]);
    }
    Owner {
        pid: process.pid as u32,
        tid: process.pid as u32,
        uid: process.uid().unwrap_or(u32::MAX),
        comm,
        thread: comm,
        cgroup: cgroup_of(process.pid as u32).unwrap_or(0),
    }
}

/// A process's cgroup id (the inode of its directory in the hierarchy the records' ids name:
/// cgroup v2, or a v1 controller's), as the programs give it for a live event.
pub fn cgroup_of(pid: u32) -> Option<u64> {
    let hierarchy = super::cgroups::Hierarchy::get()?;
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    hierarchy.id_of(hierarchy.path_in(&text)?)
}
