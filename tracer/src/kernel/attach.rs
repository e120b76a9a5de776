//! Attaching the socket object's programs: the socket path (cgroup socket programs and
//! `sock_ops` at the cgroup v2 root) or the syscall path (syscall tracepoints), and what both
//! share (the TCP state machine, the release, the data totals, `--pid`'s fork/free). The links
//! are owned here ([`Links`]), so dropping them detaches everything.
use std::os::fd::AsFd;

use aya::{
    programs::{
        cgroup_sock::CgroupSockLink, cgroup_sock_addr::CgroupSockAddrLink,
        raw_trace_point::RawTracePointLink, sock_ops::SockOpsLink, trace_point::TracePointLink,
        CgroupAttachMode, CgroupSock, CgroupSockAddr, RawTracePoint, SockOps, TracePoint,
    },
    Ebpf,
};
use tracer_common::{KernelFilter, KernelOffsets};

use crate::error::{Error, Result};
use crate::kernel::{
    loader::{Health, KernelPath, LoadOptions},
    prereq, tracefs,
};

/// Syscall tracepoints: (program name, tracepoint). The program names match `tracer-ebpf`.
const SYSCALLS: &[&str] = &[
    "socket", "bind", "listen", "accept", "accept4", "connect", "close", "shutdown",
];
/// The UDP data-path syscalls, attached only when UDP send/recv events are wanted.
const UDP_SYSCALLS: &[&str] = &["sendto", "recvfrom", "sendmsg", "recvmsg"];

/// The socket path's cgroup programs: (program name, what it is attached as).
const SOCKET_HOOKS: &[&str] = &["sock_create", "bind4", "bind6", "post_bind4", "post_bind6"];
/// The UDP datagram hooks, attached only when UDP send/recv events are wanted.
const UDP_HOOKS: &[&str] = &["sendmsg4", "sendmsg6", "recvmsg4", "recvmsg6"];

/// The attachments, owned here rather than by aya's programs so they can be torn down
/// concurrently: closing a tracepoint's perf event waits out an RCU grace period (~70 ms
/// here). The kernel still serializes part of it, but this took Ctrl-C from 1.9 s to 1.3 s.
#[derive(Default)]
pub struct Links {
    tracepoints: Vec<TracePointLink>,
    raw: Vec<RawTracePointLink>,
    cgroup: Vec<CgroupSockLink>,
    addr: Vec<CgroupSockAddrLink>,
    ops: Vec<SockOpsLink>,
}

impl Drop for Links {
    fn drop(&mut self) {
        let tracepoints = std::mem::take(&mut self.tracepoints);
        let raw = std::mem::take(&mut self.raw);
        let cgroup = std::mem::take(&mut self.cgroup);
        // Cgroup links detach at once (no RCU wait): dropped here, in order.
        self.addr.clear();
        self.ops.clear();
        std::thread::scope(|scope| {
            for link in tracepoints {
                scope.spawn(move || drop(link));
            }
            for link in raw {
                scope.spawn(move || drop(link));
            }
            for link in cgroup {
                scope.spawn(move || drop(link));
            }
        });
    }
}

/// Every program `opts` asks for, on its path; each hook's name goes into `attached`.
pub fn attach(
    ebpf: &mut Ebpf,
    links: &mut Links,
    attached: &mut Vec<String>,
    opts: &LoadOptions,
    offsets: &KernelOffsets,
) -> Result<()> {
    if opts.floor {
        return attach_floor(ebpf, links, attached, opts);
    }
    match opts.path {
        KernelPath::Syscalls => attach_syscalls(ebpf, links, attached, &opts.filter)?,
        KernelPath::Sockets => {
            if offsets.sk_userlocks == 0 || offsets.sk_max_ack_backlog == 0 {
                return Err(Error::BtfMissing(
                    "plain struct sock.sk_userlocks and sk_max_ack_backlog for the socket \
                     path (Linux 5.15+); use --syscalls"
                        .into(),
                ));
            }
            attach_socket_hooks(ebpf, links, attached, &opts.filter, "")?
        }
    }
    attached.push(attach_state(ebpf, links, "")?);
    if opts.data {
        if offsets.tp_data_sk == 0 {
            return Err(Error::MissingTracepoint(
                "sock:sock_send_length".into(),
                "data sizes need Linux 6.3 or later".into(),
            ));
        }
        for event in ["sock_send_length", "sock_recv_length"] {
            attach_tracepoint(ebpf, links, event, "sock", event)?;
            attached.push(format!("tracepoint/sock/{event}"));
        }
    }
    if opts.filter.by_pid != 0 {
        // Fork adds children to the selection; a process leaves it once freed.
        for event in ["sched_process_fork", "sched_process_free"] {
            attach_tracepoint(ebpf, links, event, "sched", event)?;
            attached.push(format!("tracepoint/sched/{event}"));
        }
    }
    attached.push(attach_release(ebpf, links, "")?);
    if opts.health != Health::Off {
        attach_health(ebpf, links, attached, opts.health, offsets)?;
    }
    Ok(())
}

/// The TCP health tracepoints (category, event; each also its program's name).
pub const HEALTH_HOOKS: &[(&str, &str)] = &[
    ("tcp", "tcp_retransmit_skb"),
    ("tcp", "tcp_retransmit_synack"),
    ("tcp", "tcp_send_reset"),
    ("tcp", "tcp_receive_reset"),
    ("skb", "kfree_skb"),
];

/// Retransmits, resets and drops, as raw tracepoints. A kernel without one of them (or
/// without the `sk_buff` fields they read) fails `Required` and leaves `IfPresent` without
/// the health events, said once.
fn attach_health(
    ebpf: &mut Ebpf,
    links: &mut Links,
    attached: &mut Vec<String>,
    health: Health,
    offsets: &KernelOffsets,
) -> Result<()> {
    let missing = HEALTH_HOOKS
        .iter()
        .find(|(category, event)| !tracefs::exists(category, event))
        .map(|(category, event)| {
            (
                format!("{category}:{event}"),
                "not in this kernel".to_string(),
            )
        })
        .or_else(|| {
            let fields = [
                offsets.skb_head,
                offsets.skb_network_header,
                offsets.skb_transport_header,
                offsets.skb_protocol,
                offsets.skb_sk,
                offsets.skb_dev,
                offsets.netdev_nd_net,
            ];
            fields.contains(&0).then(|| {
                (
                    "skb:kfree_skb".to_string(),
                    "struct sk_buff's header fields are not plain fields in this kernel's BTF"
                        .to_string(),
                )
            })
        });
    if let Some((hook, why)) = missing {
        if health == Health::Required {
            return Err(Error::MissingTracepoint(hook, why));
        }
        tracing::warn!("retransmits, resets and drops are not shown: {hook} {why}");
        return Ok(());
    }
    for (category, event) in HEALTH_HOOKS {
        let attach_one = |ebpf: &mut Ebpf, links: &mut Links| -> Result<()> {
            let program: &mut RawTracePoint = program(ebpf, event)?;
            program.load().map_err(prog_err(event))?;
            let link = program.attach(event).map_err(prog_err(event))?;
            links
                .raw
                .push(program.take_link(link).map_err(prog_err(event))?);
            Ok(())
        };
        match attach_one(ebpf, links) {
            Ok(()) => attached.push(format!("raw_tracepoint/{category}/{event}")),
            Err(e) if health == Health::Required => return Err(e),
            // Shown by default, never a reason not to watch: said once, then gone without.
            Err(e) => tracing::warn!("{category}:{event} is not watched on this kernel: {e}"),
        }
    }
    Ok(())
}

/// `tracer __floor` (the benchmark's floor row): the empty programs of tracer-ebpf's
/// `floor.rs` on every hook `opts.path` uses, so the row measures the hooks alone.
fn attach_floor(
    ebpf: &mut Ebpf,
    links: &mut Links,
    attached: &mut Vec<String>,
    opts: &LoadOptions,
) -> Result<()> {
    match opts.path {
        KernelPath::Syscalls => {
            let name = "floor_syscall";
            let tp: &mut TracePoint = program(ebpf, name)?;
            tp.load().map_err(prog_err(name))?;
            for event in syscall_events(&opts.filter)? {
                let link = tp.attach("syscalls", &event).map_err(prog_err(name))?;
                links
                    .tracepoints
                    .push(tp.take_link(link).map_err(prog_err(name))?);
                attached.push(format!("tracepoint/syscalls/{event}"));
            }
        }
        KernelPath::Sockets => attach_socket_hooks(ebpf, links, attached, &opts.filter, "floor_")?,
    }
    attached.push(attach_state(ebpf, links, "floor_")?);
    attached.push(attach_release(ebpf, links, "floor_")?);
    Ok(())
}

/// The raw `inet_sock_set_state` tracepoint (program `prefix` + its name). Returns the hook's
/// name.
fn attach_state(ebpf: &mut Ebpf, links: &mut Links, prefix: &str) -> Result<String> {
    let event = "inet_sock_set_state";
    let name = &format!("{prefix}{event}");
    let program: &mut RawTracePoint = program(ebpf, name)?;
    program.load().map_err(prog_err(name))?;
    let link = program.attach(event).map_err(prog_err(name))?;
    links
        .raw
        .push(program.take_link(link).map_err(prog_err(name))?);
    Ok(format!("raw_tracepoint/sock/{event}"))
}

/// Every socket syscall's enter and exit (the UDP send/recv ones only when selected).
fn attach_syscalls(
    ebpf: &mut aya::Ebpf,
    links: &mut Links,
    attached: &mut Vec<String>,
    filter: &KernelFilter,
) -> Result<()> {
    for event in syscall_events(filter)? {
        attach_tracepoint(ebpf, links, &event, "syscalls", &event)?;
        attached.push(format!("tracepoint/syscalls/{event}"));
    }
    Ok(())
}

/// The syscall tracepoints the syscall path attaches for `filter` (each is also the name of
/// its program in tracer-ebpf).
fn syscall_events(filter: &KernelFilter) -> Result<Vec<String>> {
    let udp: &[&str] = if filter.udp_data != 0 {
        UDP_SYSCALLS
    } else {
        &[]
    };
    let mut events = Vec::new();
    for syscall in SYSCALLS.iter().chain(udp) {
        for phase in ["enter", "exit"] {
            let event = format!("sys_{phase}_{syscall}");
            if !tracefs::exists("syscalls", &event) {
                // accept(2) is absent on some architectures (accept4 covers them).
                if *syscall == "accept" {
                    continue;
                }
                return Err(Error::MissingTracepoint(
                    format!("syscalls:{event}"),
                    "CONFIG_FTRACE_SYSCALLS is off".into(),
                ));
            }
            if filter.metrics_only != 0 && event == "sys_exit_close" {
                // Counted at enter; nothing waits for the exit.
                continue;
            }
            events.push(event);
        }
    }
    Ok(events)
}

/// The socket path: cgroup socket programs and `sock_ops` on the cgroup v2 root (the UDP
/// datagram hooks only when UDP send/recv events are selected).
fn attach_socket_hooks(
    ebpf: &mut aya::Ebpf,
    links: &mut Links,
    attached: &mut Vec<String>,
    filter: &KernelFilter,
    prefix: &str,
) -> Result<()> {
    let (cgroup, cgroup_file) = open_cgroup_root()?;
    let udp: &[&str] = if filter.udp_data != 0 { UDP_HOOKS } else { &[] };
    for &hook in SOCKET_HOOKS.iter().chain(udp) {
        let name = &format!("{prefix}{hook}");
        if hook == "sock_create" || hook.starts_with("post_bind") {
            attach_cgroup_sock(ebpf, links, name, &cgroup_file)?;
        } else {
            let program: &mut CgroupSockAddr = program(ebpf, name)?;
            program.load().map_err(prog_err(name))?;
            let link = program
                .attach(cgroup_file.as_fd(), CgroupAttachMode::Single)
                .map_err(prog_err(name))?;
            links
                .addr
                .push(program.take_link(link).map_err(prog_err(name))?);
        }
        attached.push(format!("cgroup/{hook}"));
    }
    let name = &format!("{prefix}tcp_ops");
    let program: &mut SockOps = program(ebpf, name)?;
    program.load().map_err(prog_err(name))?;
    let link = program
        .attach(cgroup_file.as_fd(), CgroupAttachMode::Single)
        .map_err(prog_err(name))?;
    links
        .ops
        .push(program.take_link(link).map_err(prog_err(name))?);
    attached.push(format!("sockops/tcp_ops on {}", cgroup.display()));
    Ok(())
}

/// `sock_release` on the cgroup v2 root, through a bpf_link: multi-attach semantics, so other
/// cgroup programs are unaffected. Returns the hook's name.
fn attach_release(ebpf: &mut aya::Ebpf, links: &mut Links, prefix: &str) -> Result<String> {
    let (cgroup, cgroup_file) = open_cgroup_root()?;
    attach_cgroup_sock(ebpf, links, &format!("{prefix}sock_release"), &cgroup_file)?;
    Ok(format!("cgroup/sock_release on {}", cgroup.display()))
}

/// The cgroup v2 root (found in mountinfo) and an fd on it to attach to.
fn open_cgroup_root() -> Result<(std::path::PathBuf, std::fs::File)> {
    let cgroup = prereq::cgroup2_root()?;
    let file = std::fs::File::open(&cgroup)
        .map_err(|e| Error::io(format!("opening cgroup {}", cgroup.display()), e))?;
    Ok((cgroup, file))
}

/// Loads cgroup socket program `name` and links it to `cgroup` (a bpf_link: multi-attach).
fn attach_cgroup_sock(
    ebpf: &mut Ebpf,
    links: &mut Links,
    name: &str,
    cgroup: &std::fs::File,
) -> Result<()> {
    let program: &mut CgroupSock = program(ebpf, name)?;
    program.load().map_err(prog_err(name))?;
    let link = program
        .attach(cgroup.as_fd(), CgroupAttachMode::Single)
        .map_err(prog_err(name))?;
    links
        .cgroup
        .push(program.take_link(link).map_err(prog_err(name))?);
    Ok(())
}

fn prog_err(name: &str) -> impl FnOnce(aya::programs::ProgramError) -> Error + '_ {
    move |source| Error::Program {
        name: name.to_string(),
        source,
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or_else(|| Error::Program {
        name: name.to_string(),
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    program.try_into().map_err(prog_err(name))
}

/// Loads and attaches one tracepoint program; the link goes straight into `links`, so no
/// caller can drop it (dropping a link detaches the program).
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    links: &mut Links,
    name: &str,
    category: &str,
    event: &str,
) -> Result<()> {
    let tp: &mut TracePoint = program(ebpf, name)?;
    tp.load().map_err(prog_err(name))?;
    let link = tp.attach(category, event).map_err(prog_err(name))?;
    links
        .tracepoints
        .push(tp.take_link(link).map_err(prog_err(name))?);
    Ok(())
}
