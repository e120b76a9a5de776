//! Loads the netfilter object (`tracer-nat`) with a small loader of its own — aya 0.14 cannot
//! load `BPF_PROG_TYPE_NETFILTER` — and links it into network namespaces.
//!
//! aya-obj parses and relocates the ELF; the maps are created with aya's `MapData` (or, for
//! the ring buffer, the one the socket object already has is shared, so both streams arrive
//! in one ring in order); then `BPF_PROG_LOAD` (type 32) and, per namespace and per hook,
//! `BPF_LINK_CREATE` (attach type `BPF_NETFILTER`) from a thread that entered the namespace.
//! Every link is an fd owned here: dropping [`NatProbes`] (or `kill -9`) detaches all of them.
use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, RingBuf};
use aya_obj::{
    generated::{bpf_attr, bpf_cmd},
    EbpfSectionKind, Object,
};
use tracer_common::{
    nat::{self, stats},
    NatCounters, NatKey, NatOffsets, NatPending,
};

use crate::error::{Error, Result};
use crate::kernel::{btf::KernelBtf, loader::Global, netns, prereq};

static NAT_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-nat"));

const BPF_PROG_TYPE_NETFILTER: u32 = 32;
const BPF_NETFILTER: u32 = 45;
const NFPROTO_IPV4: u32 = 2;
const NFPROTO_IPV6: u32 = 10;
/// `NF_IP_PRI_NAT_SRC` is 100: run just after it.
const AFTER_SNAT: i32 = 101;
/// Where the program goes: right after source NAT on the last NAT hook of every path — a
/// forwarded or locally sent packet leaves through POSTROUTING, one for this host arrives
/// through INPUT. The NAT core runs at all four NAT hooks once any NAT chain exists in the
/// namespace, so both `*_NAT_DONE` bits are set by then: the binding is whole there, and
/// each packet passes there once. (Linking after DNAT in PREROUTING and OUTPUT too only
/// doubled the runs per packet, for nothing those runs could see first.)
const HOOKS: [(u8, i32, &str); 2] = [
    (nat::NF_INET_POST_ROUTING, AFTER_SNAT, "postrouting"),
    (nat::NF_INET_LOCAL_IN, AFTER_SNAT, "input"),
];

/// Whether this kernel has netfilter eBPF programs (Linux 6.4+): its BTF knows their context.
pub fn supported(btf: &KernelBtf) -> bool {
    btf.offset("bpf_nf_ctx", "skb").is_ok()
}

/// A network namespace the programs are linked into.
struct Attached {
    inode: u32,
    /// Owned: closing them detaches.
    _links: Vec<OwnedFd>,
}

pub struct NatProbes {
    /// Declared first: links go before the program and maps.
    attached: Vec<Attached>,
    prog: OwnedFd,
    events: Option<MapData>,
    seen: Option<MapData>,
    stats: Option<MapData>,
    pending: Option<MapData>,
    /// `.rodata` and any other data maps the program references.
    _data: Vec<MapData>,
}

impl NatProbes {
    /// Loads the program. `shared_ring` is the socket object's ring buffer when both run (one
    /// stream, in order); without it the object gets its own ring of `ringbuf_bytes`.
    pub fn load(shared_ring: Option<OwnedFd>, ringbuf_bytes: u32) -> Result<Self> {
        if NAT_OBJECT.is_empty() {
            return Err(Error::StubObject);
        }
        prereq::raise_memlock();
        let btf = KernelBtf::load()?;
        if !supported(&btf) {
            return Err(Error::NatUnsupported(
                "this kernel has no netfilter eBPF programs (Linux 6.4+)".into(),
            ));
        }
        let offsets = resolve_offsets(&btf)?;
        drop(btf);
        let mut obj = Object::parse(NAT_OBJECT).map_err(|e| nat_err("parsing", e))?;
        // A record wakes the agent once a quarter of the ring waits (the agent drains on a
        // timer too): not once per binding.
        let wakeup_bytes = ringbuf_bytes / 4;
        obj.patch_map_data(HashMap::from([
            ("NAT_OFFSETS", (bytemuck::bytes_of(&offsets), true)),
            (
                "NAT_WAKEUP_BYTES",
                (bytemuck::bytes_of(&wakeup_bytes), true),
            ),
        ]))
        .map_err(|e| nat_err("setting offsets", e))?;

        let (mut maps, shared) = create_maps(&obj, shared_ring, ringbuf_bytes)?;
        let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        let fds: Vec<(String, RawFd)> = maps
            .iter()
            .map(|(n, m)| (n.clone(), m.fd().as_fd().as_raw_fd()))
            .chain(shared.iter().map(|(n, fd)| (n.clone(), fd.as_raw_fd())))
            .collect();
        let defs = obj.maps.clone();
        obj.relocate_maps(
            fds.iter().map(|(n, fd)| (n.as_str(), *fd, &defs[n])),
            &text_sections,
        )
        .map_err(|e| nat_err("relocating maps", e))?;
        obj.relocate_calls(&text_sections)
            .map_err(|e| nat_err("relocating calls", e))?;
        let program = obj
            .programs
            .get("tracer_nat")
            .ok_or_else(|| Error::NatLoad("the object has no program tracer_nat".into()))?;
        let function = &obj.functions[&program.function_key()];
        let prog = prog_load(&function.instructions)?;

        let mut take = |name: &str| -> Option<MapData> {
            let i = maps.iter().position(|(n, _)| n == name)?;
            Some(maps.swap_remove(i).1)
        };
        let events = take("EVENTS");
        let seen = take("NAT_SEEN");
        let stats = take("NAT_STATS");
        let pending = take("NAT_PENDING");
        Ok(NatProbes {
            attached: Vec::new(),
            prog,
            events,
            seen,
            stats,
            pending,
            _data: maps.into_iter().map(|(_, m)| m).collect(),
        })
    }

    /// Links the program after NAT on every hook, IPv4 and IPv6, inside namespace `inode`,
    /// opened at `path` (`None`: tracer's own). Links are made by a thread that entered it.
    pub fn attach(&mut self, name: &str, path: Option<&Path>, inode: u32) -> Result<()> {
        if self.attached.iter().any(|a| a.inode == inode) {
            return Ok(());
        }
        let prog = self
            .prog
            .try_clone()
            .map_err(|e| Error::io("duplicating the program fd", e))?;
        let make = move || -> Result<Vec<OwnedFd>> {
            let mut links = Vec::new();
            for pf in [NFPROTO_IPV4, NFPROTO_IPV6] {
                for (hook, priority, hook_name) in HOOKS {
                    let link =
                        link_create(prog.as_fd(), pf, hook as u32, priority).map_err(|e| {
                            Error::NatLoad(format!(
                                "linking to {} {hook_name} (priority {priority}): {e}",
                                if pf == NFPROTO_IPV4 { "ipv4" } else { "ipv6" }
                            ))
                        })?;
                    links.push(link);
                }
            }
            Ok(links)
        };
        let links = match path {
            None => make()?,
            Some(path) => {
                let ns = super::netns::open(path, name)
                    .map_err(|_| Error::NoSuchNetns(name.to_string()))?;
                netns::run_in(ns, make)?
            }
        };
        self.attached.push(Attached {
            inode,
            _links: links,
        });
        Ok(())
    }

    /// Closes the links made in namespace `inode`.
    pub fn detach(&mut self, inode: u32) {
        self.attached.retain(|a| a.inode != inode);
    }

    /// The ring buffer, when the object has its own (not shared with the socket object).
    pub fn take_events(&mut self) -> Result<Option<RingBuf<MapData>>> {
        self.events
            .take()
            .map(|m| {
                RingBuf::try_from(Map::RingBuf(m)).map_err(|source| Error::Map {
                    name: "EVENTS".into(),
                    source,
                })
            })
            .transpose()
    }

    /// The per-binding counters, shared with the kernel.
    pub fn take_counters(&mut self) -> Result<NatCounterMap> {
        let map = self.seen.take().ok_or_else(|| missing("NAT_SEEN"))?;
        let stats = self.stats.take().ok_or_else(|| missing("NAT_STATS"))?;
        let pending = self.pending.take().ok_or_else(|| missing("NAT_PENDING"))?;
        Ok(NatCounterMap {
            seen: BpfHashMap::try_from(Map::LruHashMap(map)).map_err(|source| Error::Map {
                name: "NAT_SEEN".into(),
                source,
            })?,
            stats: PerCpuArray::try_from(Map::PerCpuArray(stats)).map_err(|source| Error::Map {
                name: "NAT_STATS".into(),
                source,
            })?,
            pending: BpfHashMap::try_from(Map::LruHashMap(pending)).map_err(|source| {
                Error::Map {
                    name: "NAT_PENDING".into(),
                    source,
                }
            })?,
            removed: 0,
            evicted: std::sync::atomic::AtomicU64::new(0),
        })
    }
}

/// Things by the name the object gives them.
type Named<T> = Vec<(String, T)>;

/// The object's maps, created (and filled and frozen where they hold data), except the ring
/// when a shared one is given: (created maps, shared fds), by name.
fn create_maps(
    obj: &Object,
    mut shared_ring: Option<OwnedFd>,
    ringbuf_bytes: u32,
) -> Result<(Named<MapData>, Named<OwnedFd>)> {
    let mut maps: Vec<(String, MapData)> = Vec::new();
    let mut shared: Vec<(String, OwnedFd)> = Vec::new();
    for (name, def) in &obj.maps {
        if name == "EVENTS" {
            if let Some(fd) = shared_ring.take() {
                shared.push((name.clone(), fd));
                continue;
            }
        }
        let mut def = def.clone();
        if name == "EVENTS" {
            def.set_max_entries(ringbuf_bytes);
        }
        let kind = def.section_kind();
        let data = MapData::create(def, name, None).map_err(|source| Error::Map {
            name: name.clone(),
            source,
        })?;
        if matches!(
            kind,
            EbpfSectionKind::Rodata | EbpfSectionKind::Data | EbpfSectionKind::Bss
        ) {
            let value = obj.maps[name].data();
            if !value.is_empty() {
                map_update(data.fd().as_fd(), value)?;
            }
            if kind == EbpfSectionKind::Rodata {
                map_freeze(data.fd().as_fd())?;
            }
        }
        maps.push((name.clone(), data));
    }
    Ok((maps, shared))
}

fn missing(name: &str) -> Error {
    Error::NatLoad(format!("the object has no map {name}"))
}

/// The kernel's view of the bindings: per-binding counters and per-kind totals.
pub struct NatCounterMap {
    seen: BpfHashMap<MapData, Global<NatKey>, Global<NatCounters>>,
    stats: PerCpuArray<MapData, u64>,
    pending: BpfHashMap<MapData, Global<NatKey>, Global<NatPending>>,
    /// Entries user space removed (bindings that ended), and the evictions reported so far.
    removed: u64,
    evicted: std::sync::atomic::AtomicU64,
}

impl NatCounterMap {
    pub fn get(&self, key: &NatKey) -> Option<NatCounters> {
        self.seen.get(&Global(*key), 0).ok().map(|g| g.0)
    }

    /// The first packet of an entry the program saw once only, taken (key: the namespace's
    /// inode and the original tuple).
    pub fn take_pending(&mut self, key: &NatKey) -> Option<NatPending> {
        let found = self.pending.get(&Global(*key), 0).ok().map(|g| g.0)?;
        let _ = self.pending.remove(&Global(*key));
        Some(found)
    }

    /// Forgets a binding that ended (the LRU would evict it anyway, later).
    pub fn remove(&mut self, key: &NatKey) {
        if self.seen.remove(&Global(*key)).is_ok() {
            self.removed += 1;
        }
    }

    /// Binding counters the LRU map pushed out while their binding lived (their end then
    /// reports no counters): created − removed − present, read so it never over-counts
    /// (see `kernel::evictions`). Walks the map: call it every few seconds.
    pub fn evicted(&self) -> u64 {
        let created = self.stat(stats::SEEN_INSERTED);
        let removed = self.removed + self.stat(stats::SEEN_REMOVED);
        let present = self.seen.keys().filter(Result::is_ok).count() as u64;
        let now = created.saturating_sub(removed).saturating_sub(present);
        self.evicted
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed)
            .max(now)
    }

    fn stat(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Binding records the ring buffer had no room for.
    pub fn lost(&self) -> u64 {
        self.stat(stats::LOST)
    }

    /// Packets of bindings the LRU map could not hold.
    pub fn untracked(&self) -> u64 {
        self.stat(stats::UNTRACKED)
    }

    /// (packets, bytes) through NATed connections, by kind slot (snat, dnat, both).
    pub fn totals(&self) -> [(u64, u64); 3] {
        [0, 1, 2].map(|slot| {
            (
                self.stat(stats::PACKETS + slot),
                self.stat(stats::BYTES + slot),
            )
        })
    }
}

pub fn resolve_offsets(btf: &KernelBtf) -> Result<NatOffsets> {
    let tuplehash =
        btf.offset("nf_conn", "tuplehash")? + btf.offset("nf_conntrack_tuple_hash", "tuple")?;
    let hash_size = btf.struct_size("nf_conntrack_tuple_hash")?;
    for (strukt, member, size) in [
        ("nf_conn", "status", 8),
        ("sk_buff", "_nfct", 8),
        ("sk_buff", "len", 4),
        ("nf_hook_state", "hook", 1),
    ] {
        if btf.member_size(strukt, member)? != size {
            return Err(Error::BtfMissing(format!(
                "{size}-byte struct {strukt}.{member}"
            )));
        }
    }
    Ok(NatOffsets {
        skb_nfct: btf.offset("sk_buff", "_nfct")?,
        skb_len: btf.offset("sk_buff", "len")?,
        ct_status: btf.offset("nf_conn", "status")?,
        ct_tuple_orig: tuplehash,
        ct_tuple_reply: tuplehash + hash_size,
        tuple_src_u3: btf.offset("nf_conntrack_tuple", "src.u3")?,
        tuple_src_port: btf.offset("nf_conntrack_tuple", "src.u")?,
        tuple_src_l3num: btf.offset("nf_conntrack_tuple", "src.l3num")?,
        tuple_dst_u3: btf.offset("nf_conntrack_tuple", "dst.u3")?,
        tuple_dst_port: btf.offset("nf_conntrack_tuple", "dst.u")?,
        tuple_dst_protonum: btf.offset("nf_conntrack_tuple", "dst.protonum")?,
        state_hook: btf.offset("nf_hook_state", "hook")?,
        state_net: btf.offset("nf_hook_state", "net")?,
        net_inum: btf.offset("net", "ns")? + btf.offset("ns_common", "inum")?,
    })
}

fn nat_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::NatLoad(format!("{what} the netfilter object: {e}"))
}

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<i64> {
    // SAFETY: attr is a valid, fully initialised bpf_attr for `cmd`; pointers inside it point
    // to buffers that outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn map_update(fd: BorrowedFd<'_>, value: &[u8]) -> Result<()> {
    let key = 0u32;
    // SAFETY: zeroed is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_2.map_fd = fd.as_raw_fd() as u32;
    attr.__bindgen_anon_2.key = &key as *const u32 as u64;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = value.as_ptr() as u64;
    sys_bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr)
        .map(drop)
        .map_err(|e| Error::NatLoad(format!("writing the offsets map: {e}")))
}

fn map_freeze(fd: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: zeroed is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_2.map_fd = fd.as_raw_fd() as u32;
    sys_bpf(bpf_cmd::BPF_MAP_FREEZE, &mut attr)
        .map(drop)
        .map_err(|e| Error::NatLoad(format!("freezing the offsets map: {e}")))
}

fn prog_load(insns: &[aya_obj::generated::bpf_insn]) -> Result<OwnedFd> {
    let license = CString::new("GPL").expect("no NUL");
    let attempt = |log: Option<&mut Vec<u8>>| -> std::io::Result<OwnedFd> {
        // SAFETY: zeroed is a valid bpf_attr.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the prog-load member of a zeroed union.
        let load = unsafe { &mut attr.__bindgen_anon_3 };
        load.prog_type = BPF_PROG_TYPE_NETFILTER;
        load.expected_attach_type = BPF_NETFILTER;
        load.insn_cnt = insns.len() as u32;
        load.insns = insns.as_ptr() as u64;
        load.license = license.as_ptr() as u64;
        for (i, b) in b"tracer_nat".iter().enumerate() {
            load.prog_name[i] = *b as _;
        }
        if let Some(log) = log {
            load.log_level = 1;
            load.log_buf = log.as_mut_ptr() as u64;
            load.log_size = log.len() as u32;
        }
        let fd = sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)?;
        // SAFETY: the kernel returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    };
    match attempt(None) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            let mut log = vec![0u8; 1 << 20];
            let _ = attempt(Some(&mut log));
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            let tail: Vec<&str> = text.lines().rev().take(6).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(match e.raw_os_error() {
                Some(libc::EINVAL) if tail.is_empty() => Error::NatUnsupported(format!(
                    "the kernel refused a netfilter eBPF program ({e}); Linux 6.4+ is needed"
                )),
                _ => Error::NatLoad(format!(
                    "the verifier refused the netfilter program: {e}\n{}",
                    tail.join("\n")
                )),
            })
        }
    }
}

fn link_create(
    prog: BorrowedFd<'_>,
    pf: u32,
    hook: u32,
    priority: i32,
) -> std::io::Result<OwnedFd> {
    // SAFETY: zeroed is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing plain integers into the link-create members of a zeroed union.
    unsafe {
        let link = &mut attr.link_create;
        link.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
        link.attach_type = BPF_NETFILTER;
        link.__bindgen_anon_3.netfilter.pf = pf;
        link.__bindgen_anon_3.netfilter.hooknum = hook;
        link.__bindgen_anon_3.netfilter.priority = priority;
    }
    let fd = sys_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: a new fd owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
