//! Loads the socket eBPF object with offsets and filters as `.rodata`, attaches every program,
//! and owns the result: dropping [`SockProbes`] detaches everything (all links are fd-owned, so
//! even `kill -9` leaves nothing behind).
use std::os::fd::AsFd;

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    Ebpf, EbpfLoader,
};
use tracer_common::{counter, DataTotals, KernelFilter, KernelOffsets};

use crate::error::{Error, Result};
use crate::kernel::{
    attach::{attach, Links},
    btf::KernelBtf,
    prereq, tracefs,
};
pub use crate::model::types::{Health, KernelPath};

static SOCK_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-sock"));

/// A `.rodata` global handed to aya: a transparent wrapper so our Pod records satisfy aya's
/// own `Pod` bound.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct Global<T>(pub T);
// SAFETY: T is bytemuck::Pod (plain bytes, no padding), which is what aya::Pod requires.
unsafe impl<T: bytemuck::Pod> aya::Pod for Global<T> {}

/// What the agent asks the kernel side to do.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub filter: KernelFilter,
    /// Seed of the `--pid` set (the process and its descendants at start).
    pub pids: Vec<u32>,
    pub ringbuf_bytes: u32,
    /// Socket hooks or syscall tracepoints.
    pub path: KernelPath,
    /// Also sum each socket's sent and received bytes (`sock:sock_send_length` /
    /// `sock_recv_length`), delivered as DATA events at release. For `tracer trace`.
    pub data: bool,
    /// The benchmark's floor: empty programs on the same hooks, nothing else (`__floor`).
    pub floor: bool,
    /// TCP health: retransmits, resets and drops ([`super::attach::HEALTH_HOOKS`]).
    pub health: Health,
}

pub struct SockProbes {
    /// Declared first so it is dropped first, before `ebpf` unloads the programs.
    _links: Links,
    ebpf: Ebpf,
    /// Names of the hooks attached, for `doctor` and logs.
    pub attached: Vec<String>,
    /// Pids user space put in `FILTER_PIDS` (the kernel counts only the ones it adds).
    selected_pids: u64,
}

impl SockProbes {
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        if SOCK_OBJECT.is_empty() {
            return Err(Error::StubObject);
        }
        prereq::raise_memlock();
        prereq::ensure_tracefs()?;
        let btf = KernelBtf::load()?;
        let offsets = resolve_offsets(&btf)?;
        let drop_reasons = btf.enum_values("skb_drop_reason", "SKB_DROP_REASON_");
        if opts.health != Health::Off {
            crate::model::health::set_names(crate::model::health::ReasonNames {
                drop: drop_reasons.clone(),
                reset: btf.enum_values("sk_rst_reason", "SK_RST_REASON_"),
            });
        }
        let quiet = |name: &str| {
            drop_reasons
                .iter()
                .find(|(_, n)| n == name)
                .map_or(0, |(v, _)| *v)
        };
        let offsets = Global(offsets);
        let filter = Global(KernelFilter {
            syscall_path: u8::from(opts.path == KernelPath::Syscalls),
            quiet_drops: [quiet("QUEUE_PURGE"), quiet("SOCKET_CLOSE")],
            tp_args: tracepoint_args(&btf),
            ..opts.filter
        });
        // Everything wanted from the kernel's BTF is read: let this parse go before aya makes
        // its own, so the two never sit in memory at once (the agent's peak RSS).
        drop(drop_reasons);
        drop(btf);
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &offsets, true)
            .override_global("FILTER", &filter, true)
            .map_max_entries("EVENTS", opts.ringbuf_bytes)
            .load(SOCK_OBJECT)?;

        if opts.filter.by_pid != 0 {
            let mut pids: BpfHashMap<_, u32, u8> = map(&mut ebpf, "FILTER_PIDS")?;
            for pid in &opts.pids {
                pids.insert(pid, 1, 0).map_err(|source| Error::Map {
                    name: "FILTER_PIDS".into(),
                    source,
                })?;
            }
        }

        let mut attached = Vec::new();
        let mut links = Links::default();
        attach(&mut ebpf, &mut links, &mut attached, opts, &offsets.0)?;
        Ok(SockProbes {
            _links: links,
            ebpf,
            attached,
            selected_pids: if opts.filter.by_pid != 0 {
                opts.pids.len() as u64
            } else {
                0
            },
        })
    }

    /// A copy of the ring buffer's fd, to hand to the NAT object (one stream, in order).
    pub fn events_fd(&self) -> Result<std::os::fd::OwnedFd> {
        let missing = || Error::Map {
            name: "EVENTS".into(),
            source: aya::maps::MapError::InvalidName {
                name: "EVENTS".into(),
            },
        };
        match self.ebpf.map("EVENTS").ok_or_else(missing)? {
            aya::maps::Map::RingBuf(data) => data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| Error::io("duplicating the ring buffer fd", e)),
            _ => Err(missing()),
        }
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        self.take_map("EVENTS")
    }

    /// `--container`/`--pod`: where the agent tells the kernel which cgroups are selected.
    pub fn take_cgroup_verdicts(&mut self) -> Result<CgroupVerdicts> {
        Ok(CgroupVerdicts {
            map: self.take_map("CGROUP_VERDICTS")?,
            written: crate::model::bounded::BoundedMap::new(VERDICTS),
            rewritten: 0,
        })
    }

    /// The per-socket data totals still in the kernel (sockets not yet released).
    pub fn take_data(&mut self) -> Result<BpfHashMap<MapData, u64, Global<DataTotals>>> {
        self.take_map("DATA")
    }

    /// The kernel's metric counters (layout in `tracer_common::stats`, and the health
    /// counters keyed as `tracer_common::health`).
    pub fn take_stats(&mut self) -> Result<KernelStats> {
        Ok(KernelStats {
            array: self.take_map("STATS")?,
            health: self.take_map("HEALTH")?,
        })
    }

    pub fn take_counters(&mut self) -> Result<KernelCounters> {
        // Copies of the program fds: the kernel counts, per program, the runs it skipped
        // because another program was already running on that CPU (a transition in softirq
        // interrupting a syscall program). Those events are lost too.
        // The health hooks' skipped runs are kept apart: `kfree_skb` nests in itself on any
        // busy host (a close purging its queue interrupted by softirq freeing a packet), and
        // a skipped run there is a possible drop, not a socket event lost.
        let health: Vec<&str> = super::attach::HEALTH_HOOKS
            .iter()
            .map(|(_, e)| *e)
            .collect();
        let mut programs = Vec::new();
        let mut health_programs = Vec::new();
        for (name, p) in self.ebpf.programs() {
            let Some(fd) = p.fd().ok().and_then(|fd| fd.try_clone().ok()) else {
                continue;
            };
            if health.contains(&name) {
                health_programs.push(fd);
            } else {
                programs.push(fd);
            }
        }
        use super::evictions::MapCount;
        Ok(KernelCounters {
            array: self.take_map("COUNTERS")?,
            programs,
            health_programs,
            pending: MapCount::of(&self.ebpf, "PENDING", 8, 16384),
            data: MapCount::of(&self.ebpf, "DATA", 8, 65536),
            filter_pids: MapCount::of(&self.ebpf, "FILTER_PIDS", 4, 8192),
            starts: MapCount::of(&self.ebpf, "STARTS", 8, 65536),
            selected_pids: self.selected_pids,
        })
    }

    /// Moves map `name` out of the object as its typed wrapper.
    fn take_map<T>(&mut self, name: &str) -> Result<T>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map_err = |source| Error::Map {
            name: name.to_string(),
            source,
        };
        let map = self.ebpf.take_map(name).ok_or_else(|| {
            map_err(aya::maps::MapError::InvalidName {
                name: name.to_string(),
            })
        })?;
        T::try_from(map).map_err(map_err)
    }
}

/// The kernel side's failure counters, summed over CPUs, and the programs' skipped runs.
pub struct KernelCounters {
    array: PerCpuArray<MapData, u64>,
    programs: Vec<aya::programs::ProgramFd>,
    health_programs: Vec<aya::programs::ProgramFd>,
    /// The LRU maps, to count what they pushed out.
    pending: Option<super::evictions::MapCount>,
    data: Option<super::evictions::MapCount>,
    filter_pids: Option<super::evictions::MapCount>,
    starts: Option<super::evictions::MapCount>,
    selected_pids: u64,
}

/// How many times the kernel skipped program `fd` because another BPF program was running on
/// that CPU (`bpf_prog_info.recursion_misses`, Linux 5.12+; 0 where unknown).
fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> u64 {
    use aya_obj::generated::{bpf_attr, bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, bpf_prog_info};
    use std::os::fd::AsRawFd;
    // SAFETY: zeroed plain-data kernel structs; the kernel writes at most info_len bytes of
    // `info`, which lives across the call.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = std::mem::size_of::<bpf_prog_info>() as u32;
    attr.info.info = &mut info as *mut bpf_prog_info as u64;
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &mut attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if ret == 0 {
        info.recursion_misses
    } else {
        0
    }
}

impl KernelCounters {
    fn read(&self, index: u32) -> u64 {
        self.array
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// Events the kernel saw but could not deliver: ring buffer full, or no room to record a
    /// syscall's enter.
    pub fn lost(&self) -> u64 {
        self.lost_by_reason().total()
    }

    /// [`KernelCounters::lost`] by why: each reason has its own remedy (a bigger ring, fewer
    /// threads blocked in calls, a quieter scan, nothing for a program nested in itself).
    pub fn lost_by_reason(&self) -> crate::model::evicted::LostReasons {
        crate::model::evicted::LostReasons {
            ring_full: self.read(counter::LOST),
            no_pending_room: self.read(counter::PENDING_FULL),
            rate_limited: self.read(counter::UNOWNED_LIMITED),
            nested: self.skipped_runs(),
        }
    }

    /// What the kernel's LRU maps pushed out so far (`pending`, `data`, `filter_pids`). Walks
    /// the maps' keys: call it every few seconds, not per event.
    pub fn evicted(&self) -> crate::model::evicted::Evicted {
        let lru = |map: &Option<super::evictions::MapCount>, created: u32, ended: u32, extra| {
            map.as_ref().map_or(0, |m| {
                m.evicted(|| self.read(created) + extra, || self.read(ended))
            })
        };
        crate::model::evicted::Evicted {
            pending: lru(
                &self.pending,
                counter::PENDING_BEGUN,
                counter::PENDING_ENDED,
                0,
            ),
            data: lru(&self.data, counter::DATA_INSERTED, counter::DATA_REMOVED, 0),
            filter_pids: lru(
                &self.filter_pids,
                counter::FILTER_INSERTED,
                counter::FILTER_REMOVED,
                self.selected_pids,
            ),
            latency: lru(
                &self.starts,
                counter::STARTS_INSERTED,
                counter::STARTS_REMOVED,
                0,
            ),
            ..Default::default()
        }
    }

    /// Program runs the kernel skipped (recursion protection): their events never existed.
    pub fn skipped_runs(&self) -> u64 {
        self.programs
            .iter()
            .map(|p| recursion_misses(std::os::fd::AsFd::as_fd(p)))
            .sum()
    }

    /// Runs of the retransmit, reset and drop hooks the kernel skipped (nested in
    /// themselves): each a retransmit, reset or drop perhaps not counted.
    pub fn health_skipped(&self) -> u64 {
        self.health_programs
            .iter()
            .map(|p| recursion_misses(std::os::fd::AsFd::as_fd(p)))
            .sum()
    }
}

/// `CGROUP_VERDICTS`'s size (the kernel's LRU map).
const VERDICTS: usize = 16384;

/// `--container`/`--pod` in the kernel: once the agent knows a cgroup's container for good
/// (named by its runtime, the host, a user's own cgroup), it writes whether that cgroup is
/// selected, and the kernel drops the calls of those that are not before they reach the ring.
/// A cgroup not judged yet passes. A "not selected" the kernel's LRU map pushed out shows
/// itself: a call of that cgroup reaches the agent again, which writes it again (counted).
pub struct CgroupVerdicts {
    map: BpfHashMap<MapData, u64, u8>,
    /// What was written, so each verdict is written once (bounded like the kernel's map).
    written: crate::model::bounded::BoundedMap<u64, u8>,
    /// Verdicts written again after the kernel's map had pushed them out.
    rewritten: u64,
}

impl CgroupVerdicts {
    /// `selected`: the verdict; `own_call`: the judged record was made in that cgroup's own
    /// call (the kernel would have dropped it, had it still held "not selected").
    pub fn judge(&mut self, cgroup: u64, selected: bool, own_call: bool) {
        let verdict = u8::from(selected);
        if cgroup == 0 {
            return;
        }
        let known = self.written.get(&cgroup) == Some(&verdict);
        if known && (selected || !own_call) {
            return;
        }
        match self.map.insert(cgroup, verdict, 0) {
            Ok(()) => {
                self.rewritten += u64::from(known);
                self.written.insert(cgroup, verdict);
            }
            Err(e) => tracing::debug!("cgroup verdict for {cgroup}: {e}"),
        }
    }

    /// Verdicts forgotten: pushed out of the kernel's map (and written again), or out of the
    /// agent's record of them.
    pub fn forgotten(&self) -> u64 {
        self.rewritten + self.written.evicted()
    }
}

/// The kernel's per-CPU metric counters.
pub struct KernelStats {
    array: PerCpuArray<MapData, u64>,
    health: PerCpuHashMap<MapData, u32, u64>,
}

impl KernelStats {
    /// Every counter summed over CPUs, indexed as `tracer_common::stats` lays them out.
    pub fn read(&self) -> Vec<u64> {
        (0..tracer_common::stats::COUNT)
            .map(|i| {
                self.array
                    .get(&i, 0)
                    .map(|values| values.iter().sum())
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The health counters there are, summed over CPUs: (key, total), keys as
    /// `tracer_common::health::key` makes them (a few hundred at most).
    pub fn health(&self) -> Vec<(u32, u64)> {
        self.health
            .iter()
            .filter_map(|entry| entry.ok())
            .map(|(key, values)| (key, values.iter().sum()))
            .collect()
    }
}

fn map<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<BpfHashMap<&'a mut MapData, K, V>> {
    let map = ebpf.map_mut(name).ok_or_else(|| Error::Map {
        name: name.into(),
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })?;
    BpfHashMap::try_from(map).map_err(|source| Error::Map {
        name: name.into(),
        source,
    })
}

/// Which optional tracepoint arguments this kernel passes (`tracer_common::tp_args`).
fn tracepoint_args(btf: &KernelBtf) -> u8 {
    use tracer_common::tp_args;
    let has = |event: &str, n: usize| btf.tracepoint_args(event).is_some_and(|a| a >= n);
    let mut bits = 0;
    if has("tcp_retransmit_skb", 3) {
        bits |= tp_args::RETRANSMIT_ERR;
    }
    if has("tcp_send_reset", 3) {
        bits |= tp_args::RESET_REASON;
    }
    if has("kfree_skb", 4) {
        bits |= tp_args::DROP_RX_SK;
    }
    bits
}

/// A member's offset if it is a plain field of `size` bytes, else 0.
fn sized(btf: &KernelBtf, strukt: &str, member: &str, size: usize) -> u32 {
    match btf.member_size(strukt, member) {
        Ok(n) if n == size => btf.offset(strukt, member).unwrap_or(0),
        _ => 0,
    }
}

/// Every offset the programs use: struct members from BTF, record fields from tracefs.
pub fn resolve_offsets(btf: &KernelBtf) -> Result<KernelOffsets> {
    let tp = |category: &str, event: &str, field: &str, size: u32| -> Result<u32> {
        tracefs::Format::read(category, event)?
            .offset(field, size)
            .map_err(|reason| Error::TracepointFormat {
                path: format!("{}/events/{category}/{event}/format", tracefs::TRACEFS).into(),
                reason,
            })
    };
    for (strukt, member, size) in [("sock", "sk_protocol", 2), ("sock", "sk_type", 2)] {
        if btf.member_size(strukt, member)? != size {
            return Err(Error::BtfMissing(format!(
                "{size}-byte struct {strukt}.{member}"
            )));
        }
    }
    // The data tracepoints (Linux 6.3+) are optional: without them `trace` says so.
    let data = |field: &str, size: u32| -> Result<u32> {
        if !tracefs::exists("sock", "sock_send_length") {
            return Ok(0);
        }
        let send = tp("sock", "sock_send_length", field, size)?;
        let recv = tp("sock", "sock_recv_length", field, size)?;
        if send != recv {
            return Err(Error::TracepointFormat {
                path: format!("{}/events/sock/sock_recv_length/format", tracefs::TRACEFS).into(),
                reason: format!("field {field} is not where sock_send_length has it"),
            });
        }
        Ok(send)
    };
    let net_ns = btf.offset("net", "ns")?;
    let ns_inum = btf.offset("ns_common", "inum")?;
    Ok(KernelOffsets {
        task_files: btf.offset("task_struct", "files")?,
        files_fdt: btf.offset("files_struct", "fdt")?,
        fdtable_max_fds: btf.offset("fdtable", "max_fds")?,
        fdtable_fd: btf.offset("fdtable", "fd")?,
        file_private_data: btf.offset("file", "private_data")?,
        file_f_inode: btf.offset("file", "f_inode")?,
        inode_i_mode: btf.offset("inode", "i_mode")?,
        socket_sk: btf.offset("socket", "sk")?,
        skc_daddr: btf.offset("sock_common", "skc_daddr")?,
        skc_rcv_saddr: btf.offset("sock_common", "skc_rcv_saddr")?,
        skc_dport: btf.offset("sock_common", "skc_dport")?,
        skc_num: btf.offset("sock_common", "skc_num")?,
        skc_family: btf.offset("sock_common", "skc_family")?,
        skc_state: btf.offset("sock_common", "skc_state")?,
        skc_net: btf.offset("sock_common", "skc_net")?,
        skc_v6_daddr: btf.offset("sock_common", "skc_v6_daddr")?,
        skc_v6_rcv_saddr: btf.offset("sock_common", "skc_v6_rcv_saddr")?,
        net_inum: net_ns + ns_inum,
        sk_protocol: btf.offset("sock", "sk_protocol")?,
        sk_type: btf.offset("sock", "sk_type")?,
        sk_err: btf.offset("sock", "sk_err")?,
        tp_syscall_args: tp("syscalls", "sys_enter_bind", "fd", 8)?,
        tp_syscall_ret: tp("syscalls", "sys_exit_bind", "ret", 8)?,
        inet_sport: btf.offset("inet_sock", "inet_sport")?,
        tp_fork_child_pid: tp("sched", "sched_process_fork", "child_pid", 4)?,
        tp_free_pid: tp("sched", "sched_process_free", "pid", 4)?,
        tp_data_sk: data("sk", 8)?,
        tp_data_family: data("family", 2)?,
        tp_data_ret: data("ret", 4)?,
        tp_data_flags: data("flags", 4)?,
        task_group_leader: btf.offset("task_struct", "group_leader")?,
        task_comm: btf.offset("task_struct", "comm")?,
        // The socket path's own: 0 (that path refuses to load) where they are not plain
        // fields (`sk_userlocks` was a bitfield before Linux 5.15).
        sk_userlocks: sized(btf, "sock", "sk_userlocks", 1),
        sk_max_ack_backlog: sized(btf, "sock", "sk_max_ack_backlog", 4),
        // The health hooks' own (0: they are not loaded).
        skb_head: sized(btf, "sk_buff", "head", 8),
        skb_network_header: sized(btf, "sk_buff", "network_header", 2),
        skb_transport_header: sized(btf, "sk_buff", "transport_header", 2),
        skb_protocol: sized(btf, "sk_buff", "protocol", 2),
        skb_sk: sized(btf, "sk_buff", "sk", 8),
        skb_dev: sized(btf, "sk_buff", "dev", 8),
        netdev_nd_net: sized(btf, "net_device", "nd_net", 8),
        tcp_srtt_us: sized(btf, "tcp_sock", "srtt_us", 4),
        ..cgroup_v1_offsets(btf)?
    })
}

/// Where a task's cgroup in a v1 controller's hierarchy is, when that hierarchy names the
/// records' cgroups ([`super::cgroups`]); all 0 (the v2 helper) otherwise.
fn cgroup_v1_offsets(btf: &KernelBtf) -> Result<KernelOffsets> {
    let Some(controller) = super::cgroups::Hierarchy::get().and_then(|h| h.controller()) else {
        return Ok(KernelOffsets::default());
    };
    let want = format!("{controller}_cgrp_id");
    let index = btf
        .enum_values("cgroup_subsys_id", "")
        .into_iter()
        .find(|(_, name)| *name == want)
        .map(|(index, _)| index);
    let offsets = (|| {
        Some(KernelOffsets {
            cgroup_v1_subsys: index? + 1,
            task_cgroups: btf.offset("task_struct", "cgroups").ok()?,
            css_set_subsys: btf.offset("css_set", "subsys").ok()?,
            css_cgroup: btf.offset("cgroup_subsys_state", "cgroup").ok()?,
            cgroup_kn: btf.offset("cgroup", "kn").ok()?,
            kernfs_node_id: btf.offset("kernfs_node", "id").ok()?,
            ..KernelOffsets::default()
        })
    })();
    Ok(offsets.unwrap_or_else(|| {
        // The programs keep the v2 helper; user space must not read its ids as v1 ones.
        tracing::warn!(
            "this kernel's BTF lacks what reading a task's {controller} cgroup needs: containers are not named"
        );
        super::cgroups::Hierarchy::v1_unreadable();
        KernelOffsets::default()
    }))
}
