//! Conntrack events over netlink (`NETLINK_NETFILTER`, ctnetlink), per network namespace:
//! when a binding ends (destroy events), and on kernels without netfilter eBPF programs, when
//! it starts (new events) — the fallback that has no per-packet counters.
//!
//! Messages are decoded with `netlink-packet-netfilter`; one blocking reader thread per
//! namespace forwards them on a channel.
use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::{
    conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple},
    NetfilterMessage, NetfilterMessageInner,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::error::{Error, Result};
use crate::kernel::{netns, prereq};
use crate::model::nat::{CtEvent, CtTuple};

/// `NFNLGRP_CONNTRACK_NEW` and `NFNLGRP_CONNTRACK_DESTROY`.
const GROUP_NEW: u32 = 1;
const GROUP_DESTROY: u32 = 3;

/// Messages the kernel could not queue for us (ENOBUFS), and messages from anyone but the
/// kernel, over every namespace.
#[derive(Default)]
pub struct CtStats {
    pub overruns: AtomicU64,
    /// Messages dropped because they did not come from the kernel.
    pub forged: AtomicU64,
}

/// Subscribes in namespace `path` (`None`: tracer's own) and forwards its events to `tx`
/// until `stop` is set or the channel closes.
pub fn listen(
    path: Option<PathBuf>,
    inode: u32,
    new: bool,
    tx: tokio::sync::mpsc::UnboundedSender<CtEvent>,
    stop: Arc<AtomicBool>,
    stats: Arc<CtStats>,
) -> Result<()> {
    let open = move || -> Result<(Socket, Option<Socket>)> {
        let socket = kernel_socket()?;
        for group in new.then_some(GROUP_NEW).into_iter().chain([GROUP_DESTROY]) {
            socket.add_membership(group).map_err(|e| {
                Error::io(
                    "subscribing to conntrack events (is nf_conntrack_netlink available?)",
                    e,
                )
            })?;
        }
        let _ = socket.set_rx_buf_sz(4 << 20);
        // Subscribed first, then the table asked for: an entry made meanwhile is in the dump,
        // or its event is queued, or both (the second one is then a binding already known).
        let dump = ask_for_table().inspect_err(|e| {
            tracing::debug!("conntrack table dump in netns {inode}: {e}");
        });
        Ok((socket, dump.ok()))
    };
    let (socket, dump) = match path {
        Some(path) => {
            let ns = super::netns::open(&path, &path.display().to_string())
                .map_err(|_| Error::NoSuchNetns(path.display().to_string()))?;
            netns::run_in(ns, open)?
        }
        None => open()?,
    };
    set_timeout(&socket, Duration::from_millis(200));
    std::thread::Builder::new()
        .name(format!("conntrack-{inode}"))
        .spawn(move || {
            // Capabilities are per thread, and this one may start before the drop: reading an
            // open socket needs none.
            if let Err(e) = prereq::restrict_thread(prereq::Keep::NOTHING) {
                tracing::warn!("conntrack reader: dropping capabilities: {e}");
            }
            if let Some(dump) = dump {
                read_table(dump, inode, &tx);
            }
            read_loop(socket, inode, tx, stop, stats)
        })
        .map_err(|e| Error::io("starting the conntrack reader", e))?;
    Ok(())
}

/// A ctnetlink socket in the calling thread's namespace, connected to the kernel: the kernel
/// then refuses unicast messages to it from anyone else — in a namespace a user made with
/// `unshare -rn` they hold CAP_NET_ADMIN and could otherwise forge conntrack messages at
/// tracer.
fn kernel_socket() -> Result<Socket> {
    let mut socket = Socket::new(NETLINK_NETFILTER)
        .map_err(|e| Error::io("opening a conntrack netlink socket", e))?;
    socket
        .bind(&SocketAddr::new(0, 0))
        .map_err(|e| Error::io("binding the conntrack netlink socket", e))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| Error::io("connecting the conntrack netlink socket", e))?;
    Ok(socket)
}

/// Each whole netlink message in `buf`, in order, until `each` says stop (false) or the
/// bytes end; false when `each` stopped.
fn each_message(
    buf: &[u8],
    mut each: impl FnMut(NetlinkMessage<NetfilterMessage>) -> bool,
) -> bool {
    let mut offset = 0;
    while offset < buf.len() {
        let Ok(msg) = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[offset..]) else {
            break;
        };
        let len = msg.header.length as usize;
        if !each(msg) {
            return false;
        }
        if len == 0 {
            break;
        }
        offset += (len + 3) & !3;
    }
    true
}

/// Entries of a namespace's table read when tracer links in, at most (the rest are not
/// known until they end or, on the fallback, until they are replaced).
pub const MAX_TABLE_DUMP: usize = 65_536;

/// Asks the namespace's conntrack table for every entry (IPv4 and IPv6), on a socket of its
/// own: sent here, while the calling thread holds CAP_NET_ADMIN in the namespace (ctnetlink
/// checks it on the request); the answer is read later, without privileges.
fn ask_for_table() -> Result<Socket> {
    use netlink_packet_core::{NetlinkHeader, NLM_F_DUMP, NLM_F_REQUEST};
    use netlink_packet_netfilter::{NetfilterHeader, NetfilterProtoFamily};
    let socket = kernel_socket()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
            ConntrackMessage::Get(vec![]),
        )),
    );
    request.finalize();
    let mut buf = vec![0u8; request.buffer_len()];
    request.serialize(&mut buf);
    socket
        .send(&buf, 0)
        .map_err(|e| Error::io("asking for the conntrack table", e))?;
    set_timeout(&socket, Duration::from_secs(1));
    Ok(socket)
}

/// Reads the table's entries asked for by [`ask_for_table`] and forwards them as `existing`
/// entries, [`MAX_TABLE_DUMP`] at most; stops at the end of the dump, an error, a second of
/// silence or a closed channel.
fn read_table(socket: Socket, inode: u32, tx: &tokio::sync::mpsc::UnboundedSender<CtEvent>) {
    let mut buf = vec![0u8; 1 << 16];
    let mut read = 0;
    while read < MAX_TABLE_DUMP {
        let n = match socket.recv_from(&mut &mut buf[..], 0) {
            Ok((n, from)) if from.port_number() == 0 => n,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!("conntrack table of netns {inode}: {e}");
                return;
            }
        };
        let more = each_message(&buf[..n], |msg| {
            if matches!(
                msg.payload,
                NetlinkPayload::Done(_) | NetlinkPayload::Error(_)
            ) {
                return false;
            }
            if let Some(mut entry) = decode(inode, msg) {
                entry.existing = true;
                read += 1;
                return tx.send(entry).is_ok() && read < MAX_TABLE_DUMP;
            }
            true
        });
        if !more {
            return;
        }
    }
}

fn set_timeout(socket: &Socket, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid fd and a timeval that lives across the call.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
}

fn read_loop(
    socket: Socket,
    inode: u32,
    tx: tokio::sync::mpsc::UnboundedSender<CtEvent>,
    stop: Arc<AtomicBool>,
    stats: Arc<CtStats>,
) {
    let mut buf = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) && !tx.is_closed() {
        let n = match socket.recv_from(&mut &mut buf[..], 0) {
            // Only the kernel (port 0) speaks for conntrack: in a namespace a user made
            // (`unshare -rn`) they hold CAP_NET_ADMIN and may send to its multicast groups.
            Ok((n, from)) if from.port_number() == 0 => n,
            Ok(_) => {
                if stats.forged.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        "netns {inode}: dropped a conntrack message that the kernel did not send"
                    );
                }
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                stats.overruns.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::warn!("conntrack events of netns {inode} stopped: {e}");
                return;
            }
        };
        let open = each_message(&buf[..n], |msg| match decode(inode, msg) {
            Some(event) => tx.send(event).is_ok(),
            None => true,
        });
        if !open {
            return;
        }
    }
}

/// One netlink message → a conntrack event, if it is one.
pub fn decode(netns: u32, msg: NetlinkMessage<NetfilterMessage>) -> Option<CtEvent> {
    let NetlinkPayload::InnerMessage(NetfilterMessage { inner, .. }) = msg.payload else {
        return None;
    };
    let NetfilterMessageInner::Conntrack(ct) = inner else {
        return None;
    };
    let (destroyed, attrs) = match ct {
        ConntrackMessage::New(a) => (false, a),
        ConntrackMessage::Delete(a) => (true, a),
        _ => return None,
    };
    let mut orig = None;
    let mut reply = None;
    let mut status = None;
    let mut protocol = 0;
    for attr in attrs {
        match attr {
            ConntrackAttribute::CtaTupleOrig(t) => orig = tuple(&t, &mut protocol),
            ConntrackAttribute::CtaTupleReply(t) => reply = tuple(&t, &mut protocol),
            ConntrackAttribute::CtaStatus(s) => status = Some(s.bits()),
            _ => {}
        }
    }
    Some(CtEvent {
        netns,
        destroyed,
        protocol,
        orig: orig?,
        reply: reply?,
        status,
        existing: false,
    })
}

fn tuple(parts: &[Tuple], protocol: &mut u8) -> Option<CtTuple> {
    let (mut src, mut dst, mut sport, mut dport) = (None, None, 0, 0);
    for part in parts {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(proto) => *protocol = protocol_number(proto),
                        ProtoTuple::SourcePort(port) => sport = *port,
                        ProtoTuple::DestinationPort(port) => dport = *port,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(CtTuple {
        src: src?,
        dst: dst?,
        sport,
        dport,
    })
}

fn protocol_number(p: &Protocol) -> u8 {
    u8::from(*p)
}

/// A namespace's conntrack table files, opened from inside it while tracer may still enter it
/// (at link time, before capabilities are dropped) and read later from anywhere: an open
/// `/proc/sys/net/...` or `/proc/net/...` file answers for the namespace it was opened in.
pub struct CtFiles {
    count: std::fs::File,
    max: Option<std::fs::File>,
    stat: Option<std::fs::File>,
}

impl CtFiles {
    /// Opens them in namespace `path` (None: tracer's own). Err when the namespace has no
    /// conntrack table (the module not loaded there).
    pub fn open(path: Option<&std::path::Path>) -> Result<CtFiles> {
        fn here() -> Result<CtFiles> {
            let count = "/proc/sys/net/netfilter/nf_conntrack_count";
            Ok(CtFiles {
                count: std::fs::File::open(count)
                    .map_err(|e| Error::io(format!("opening {count}"), e))?,
                max: std::fs::File::open("/proc/sys/net/netfilter/nf_conntrack_max").ok(),
                // This thread's namespace (/proc/net follows the process's first thread).
                stat: std::fs::File::open("/proc/thread-self/net/stat/nf_conntrack").ok(),
            })
        }
        match path {
            Some(path) => {
                let ns = super::netns::open(path, &path.display().to_string())?;
                netns::run_in(ns, here)
            }
            None => here(),
        }
    }

    /// The table now: (`nf_conntrack_count`, `nf_conntrack_max`, the statistics summed).
    pub fn read(&self) -> Result<(u64, Option<u64>, Option<crate::model::nat::health::CtStat>)> {
        fn text(f: &std::fs::File) -> std::io::Result<String> {
            use std::io::{Read, Seek};
            let mut f = f;
            f.rewind()?;
            let mut s = String::new();
            f.read_to_string(&mut s)?;
            Ok(s)
        }
        let count = text(&self.count)
            .map_err(|e| Error::io("reading nf_conntrack_count", e))?
            .trim()
            .parse()
            .unwrap_or(0);
        let max = self
            .max
            .as_ref()
            .and_then(|f| text(f).ok())
            .and_then(|t| t.trim().parse().ok());
        let stat = self
            .stat
            .as_ref()
            .and_then(|f| text(f).ok())
            .and_then(|t| crate::model::nat::health::CtStat::parse(&t));
        Ok((count, max, stat))
    }
}

/// The port ranges source NAT rules in namespace `path` (None: tracer's own) pick from, per
/// address family, as `nft -j list ruleset` shows them, else (IPv4) `iptables-save -t nat`:
/// legacy only when the namespace already has a legacy nat table (listing one would load the
/// module and make it), then the nft backend. Run inside the namespace (the tools answer for
/// their own), at link time; `read` false when no tool could list the rules (after tracer gave
/// up its privileges, for a namespace found later). Each tool gets 5 s and 4 MiB of output:
/// any user can fill a namespace of their own with rules.
pub fn pool_rules(path: Option<&std::path::Path>) -> crate::model::nat::pool::RulesRead {
    use crate::model::nat::pool::{iptables_range, nft_ranges, PoolRange, RulesRead};
    fn here() -> Result<RulesRead> {
        let mut read = false;
        if let Some(out) = run_capped("nft", &["-j", "list", "ruleset"]) {
            read = true;
            if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&out) {
                let ranges: Vec<_> = nft_ranges(&json)
                    .into_iter()
                    .map(|(f, range)| {
                        (
                            f,
                            PoolRange {
                                range,
                                from: "nftables",
                            },
                        )
                    })
                    .collect();
                if !ranges.is_empty() {
                    return Ok(RulesRead { read, ranges });
                }
            }
        }
        let legacy_nat = std::fs::read_to_string("/proc/thread-self/net/ip_tables_names")
            .is_ok_and(|t| t.lines().any(|l| l.trim() == "nat"));
        let tools: &[&str] = if legacy_nat {
            &["iptables-legacy-save", "iptables-nft-save"]
        } else {
            &["iptables-nft-save"]
        };
        for tool in tools {
            if let Some(out) = run_capped(tool, &["-t", "nat"]) {
                read = true;
                if let Some(range) = iptables_range(&String::from_utf8_lossy(&out)) {
                    let range = PoolRange {
                        range,
                        from: "iptables",
                    };
                    return Ok(RulesRead {
                        read,
                        ranges: vec![(tracer_common::AF_INET, range)],
                    });
                }
            }
        }
        Ok(RulesRead {
            read,
            ranges: Vec::new(),
        })
    }
    let found = match path {
        Some(path) => super::netns::open(path, &path.display().to_string())
            .and_then(|ns| netns::run_in(ns, here)),
        None => here(),
    };
    found.unwrap_or_default()
}

/// Runs `cmd args` and returns its output when it succeeds within 5 s: at most 4 MiB read,
/// no input, the child killed and reaped past the deadline (its reader left to a thread).
fn run_capped(cmd: &str, args: &[&str]) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.take(4 << 20).read_to_end(&mut out);
        let _ = tx.send(out);
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                // Still ours to kill: not reaped yet.
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let out = rx.recv_timeout(Duration::from_secs(1)).ok()?;
    status.filter(|s| s.success()).map(|_| out)
}

/// The DNAT rules of tracer's own namespace (port mappings: `ports --mappings`): native nft
/// `dnat` rules from `nft -j list ruleset`, and iptables' (IPv4 and IPv6, the nft backend, and
/// legacy where a legacy nat table already exists) from `*-save -t nat`. Each tool gets 5 s
/// and 4 MiB of output; at most 4,096 rules are kept. None when no tool could list them.
pub fn dnat_rules() -> Option<Vec<crate::model::mapping::DnatRule>> {
    use crate::model::mapping::{from_iptables_save, from_nft_json};
    const MAX: usize = 4096;
    let mut read = false;
    let mut rules = Vec::new();
    if let Some(out) = run_capped("nft", &["-j", "list", "ruleset"]) {
        read = true;
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&out) {
            rules.extend(from_nft_json(&json, MAX));
        }
    }
    let tables = |file: &str| {
        std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))
            .is_ok_and(|t| t.lines().any(|l| l.trim() == "nat"))
    };
    let mut tools = vec!["iptables-nft-save", "ip6tables-nft-save"];
    if tables("ip_tables_names") {
        tools.push("iptables-legacy-save");
    }
    if tables("ip6_tables_names") {
        tools.push("ip6tables-legacy-save");
    }
    for tool in tools {
        if let Some(out) = run_capped(tool, &["-t", "nat"]) {
            read = true;
            rules.extend(from_iptables_save(
                &String::from_utf8_lossy(&out),
                MAX.saturating_sub(rules.len()),
            ));
        }
    }
    read.then_some(rules)
}
