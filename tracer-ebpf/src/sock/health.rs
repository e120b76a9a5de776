//! TCP health: retransmits, resets and dropped packets, from stable tracepoints taken raw
//! (`tcp:tcp_retransmit_skb`, `tcp_retransmit_synack`, `tcp_send_reset`, `tcp_receive_reset`,
//! `skb:kfree_skb`). Most run in softirq or a timer, under whatever task was on the CPU: no
//! record names that task (pid 0, no `OWNER_IN_CONTEXT`); user space charges each to the
//! socket's owner through its table. Counted in `HEALTH` before the ring (exact under load);
//! `serve` only counts.
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use tracer_common::{
    counter, health, kind, stats, tcp_state, tp_args, SockEvent, AF_INET, AF_INET6, IPPROTO_TCP,
    IPPROTO_UDP,
};
use tracer_ebpf::{
    maps::EVENTS,
    mem::put16,
    set,
    time::now_ns,
    window::{read, Window},
};

use crate::{
    emit::wakeup,
    filter::selected,
    maps::{bump, HEALTH, UNOWNED},
    sk::{addresses, netns_of, SkCommon},
};

/// `ETH_P_IP` / `ETH_P_IPV6` as `skb->protocol` holds them (network order).
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// What one record says.
struct Seen {
    kind: u16,
    /// The socket whose owner it is charged to (0: none).
    sk: u64,
    protocol: u8,
    family: u16,
    state: u8,
    lport: u16,
    rport: u16,
    netns: u32,
    laddr: [u64; 2],
    raddr: [u64; 2],
    arg: i64,
    ret: i64,
}

impl Seen {
    /// A record about socket `sk` (or a request socket: its `sock_common` is the same), from
    /// its own fields.
    #[inline(always)]
    fn of_socket(kind: u16, sk: u64, fields_from: u64) -> Option<Seen> {
        let mut common = SkCommon::empty();
        common.load(fields_from)?;
        let family: u16 = common.get(off!(skc_family))?;
        if family != AF_INET && family != AF_INET6 {
            return None;
        }
        let (laddr, raddr) = addresses(&common, family);
        let state: u8 = common.get(off!(skc_state)).unwrap_or(0);
        let mut lport: u16 = common.get(off!(skc_num)).unwrap_or(0);
        if lport == 0 && state == tcp_state::CLOSE && sk == fields_from {
            // A full socket gave its port back on its way into CLOSE (a reset sent by a
            // close() with data unread comes after): `inet_sport` still names it.
            lport = u16::from_be(read::<u16>(sk, off!(inet_sport)).unwrap_or(0));
        }
        Some(Seen {
            kind,
            sk,
            protocol: IPPROTO_TCP,
            family,
            state,
            lport,
            rport: u16::from_be(common.get::<u16>(off!(skc_dport)).unwrap_or(0)),
            netns: netns_of(&common),
            laddr,
            raddr,
            arg: 0,
            ret: 0,
        })
    }
}

/// A packet's protocol and endpoints, from its own headers.
struct Packet {
    protocol: u8,
    family: u16,
    src: [u64; 2],
    dst: [u64; 2],
    sport: u16,
    dport: u16,
    netns: u32,
}

/// The IPv4/IPv6 and TCP/UDP headers of `skb`, when it carries TCP or UDP.
#[inline(always)]
fn packet(skb: u64) -> Option<Packet> {
    let proto = u16::from_be(read::<u16>(skb, off!(skb_protocol))?);
    let head: u64 = read(skb, off!(skb_head))?;
    let network: u16 = read(skb, off!(skb_network_header))?;
    let transport: u16 = read(skb, off!(skb_transport_header))?;
    let ip = head + network as u64;
    let (family, protocol, src, dst, header_len) = if proto == ETH_P_IP {
        let w = Window::<3>::read(ip)?;
        let version_ihl: u8 = w.get(0)?;
        if version_ihl >> 4 != 4 {
            return None;
        }
        (
            AF_INET,
            w.get::<u8>(9)?,
            w.addr4(12),
            w.addr4(16),
            (version_ihl & 15) as u64 * 4,
        )
    } else if proto == ETH_P_IPV6 {
        let w = Window::<5>::read(ip)?;
        if w.get::<u8>(0)? >> 4 != 6 {
            return None;
        }
        // The next header only: a packet with extension headers is not counted.
        (AF_INET6, w.get::<u8>(6)?, w.addr16(8), w.addr16(24), 40)
    } else {
        return None;
    };
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return None;
    }
    // Set by the IP layer on the way in; otherwise right after the fixed header.
    let l4 = if transport != 0xffff && transport > network {
        head + transport as u64
    } else {
        ip + header_len
    };
    let ports: [u8; 4] = read(l4, 0)?;
    let dev: u64 = read(skb, off!(skb_dev)).unwrap_or(0);
    let net: u64 = read(dev, off!(netdev_nd_net)).unwrap_or(0);
    Some(Packet {
        protocol,
        family,
        src,
        dst,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        netns: read::<u32>(net, off!(net_inum)).unwrap_or(0),
    })
}

impl Packet {
    /// As the local end sees it: received (local = destination) or sent.
    #[inline(always)]
    fn seen(&self, kind: u16, sk: u64, received: bool) -> Seen {
        let (laddr, lport, raddr, rport) = if received {
            (self.dst, self.dport, self.src, self.sport)
        } else {
            (self.src, self.sport, self.dst, self.dport)
        };
        Seen {
            kind,
            sk,
            protocol: self.protocol,
            family: self.family,
            state: 0,
            lport,
            rport,
            netns: self.netns,
            laddr,
            raddr,
            arg: 0,
            ret: 0,
        }
    }
}

/// The namespace of a socket (any kind: its `sock_common`), 0 for none.
#[inline(always)]
fn netns_of_sk(sk: u64) -> u32 {
    let net: u64 = read(sk, off!(skc_net)).unwrap_or(0);
    read::<u32>(net, off!(net_inum)).unwrap_or(0)
}

#[inline(always)]
fn family_slot(family: u16) -> u8 {
    stats::family_slot(family) as u8
}

/// Counts `key` in this CPU's slot of `HEALTH`.
#[inline(always)]
fn count(key: u32) {
    if let Some(c) = HEALTH.get_ptr_mut(key) {
        // SAFETY: this CPU's value, valid for the program's run; only tracing programs nested
        // in softirq touch it meanwhile, and they only add.
        unsafe { *c += 1 };
        return;
    }
    // The first of its key: another CPU may insert it at the same moment (its own slot).
    if HEALTH.insert(key, 1, 1 /* BPF_NOEXIST */).is_err() {
        if let Some(c) = HEALTH.get_ptr_mut(key) {
            // SAFETY: as above.
            unsafe { *c += 1 };
        }
    }
}

/// Whether this CPU may send another record for a packet no socket had this second.
#[inline(always)]
fn within_unowned_budget() -> bool {
    let Some(slot) = UNOWNED.get_ptr_mut(0) else {
        return false;
    };
    let now = now_ns();
    // SAFETY: this CPU's slot, valid for the program's run; a program nested in softirq on
    // this CPU may interleave, which at worst lets one record more through.
    let slot = unsafe { &mut *slot };
    if now.saturating_sub(slot[0]) >= 1_000_000_000 {
        slot[0] = now;
        slot[1] = 0;
    }
    slot[1] += 1;
    slot[1] <= tracer_common::UNOWNED_PER_SECOND
}

/// Counts the record (unless a process filter waits for user space's attribution) and,
/// unless `serve` only counts, writes it to the ring.
#[inline(always)]
fn report(seen: &Seen, key: u32) {
    if !selected(
        seen.protocol,
        seen.family,
        seen.netns,
        seen.lport,
        seen.rport,
    ) {
        return;
    }
    let process_filter = filt!(by_pid) != 0 || filt!(by_comm) != 0 || filt!(by_cgroup) != 0;
    if seen.sk == 0 && process_filter {
        // No socket, no owner: no selected process's.
        return;
    }
    if !process_filter {
        count(key);
    }
    if filt!(metrics_only) != 0 {
        return;
    }
    if seen.sk == 0 && !within_unowned_budget() {
        bump(counter::UNOWNED_LIMITED);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<SockEvent>(0) else {
        bump(counter::LOST);
        return;
    };
    // SAFETY: `reserve` returned room for one `SockEvent` in the ring (8-byte aligned), ours
    // alone until `submit`. Every field is written below before the record is submitted;
    // `SockEvent` is plain integers, so no write drops a value.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    set!(ev.kind, seen.kind);
    set!(ev.family, seen.family);
    set!(ev.lport, seen.lport);
    set!(ev.rport, seen.rport);
    set!(ev.protocol, seen.protocol);
    set!(ev.sock_type, 0);
    set!(ev.old_state, 0);
    set!(ev.new_state, seen.state);
    set!(ev.flags, 0);
    set!(ev._pad[0], 0);
    set!(ev._pad[1], 0);
    set!(ev._pad[2], 0);
    // Never the task on the CPU: softirq and timers run under anyone.
    set!(ev.pid, 0);
    set!(ev.tid, 0);
    set!(ev.uid, 0);
    set!(ev.netns, seen.netns);
    set!(ev.fd, -1);
    set!(ev.sk_err, 0);
    set!(ev.ts_ns, now_ns());
    set!(ev.sk, seen.sk);
    set!(ev.parent_sk, 0);
    set!(ev.ret, seen.ret);
    set!(ev.arg, seen.arg);
    put16(&mut ev.laddr, seen.laddr);
    put16(&mut ev.raddr, seen.raddr);
    put16(&mut ev.comm, [0; 2]);
    put16(&mut ev.thread, [0; 2]);
    set!(ev.cgroup, 0);
    entry.submit(wakeup());
}

/// `(sk, skb, err)`: a segment of `sk` sent again (a SYN while SYN_SENT).
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let err = if filt!(tp_args) & tp_args::RETRANSMIT_ERR != 0 {
        ctx.arg::<u64>(2) as i32
    } else {
        0
    };
    // Linux 6.17 also reports attempts that sent nothing (the segment still queued below:
    // EBUSY …): a retransmit is one that left.
    if err != 0 {
        return 0;
    }
    if let Some(seen) = Seen::of_socket(kind::RETRANSMIT, sk, sk) {
        let key = health::key(health::RETRANSMIT, seen.state, 0, family_slot(seen.family));
        report(&seen, key);
    }
    0
}

/// `(listener, req)`: a SYN-ACK sent again for a connection not yet established.
#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack(ctx: RawTracePointContext) -> i32 {
    let listener: u64 = ctx.arg(0);
    let req: u64 = ctx.arg(1);
    if let Some(mut seen) = Seen::of_socket(kind::RETRANSMIT, listener, req) {
        seen.state = tcp_state::SYN_RECV;
        seen.arg = 1;
        let key = health::key(health::RETRANSMIT, seen.state, 1, family_slot(seen.family));
        report(&seen, key);
    }
    0
}

/// `(sk, skb, reason)`: an RST sent. `skb` is the segment answered (none for a reset the
/// socket's own close or abort sends); `sk` may be NULL (no socket for that segment), a
/// listener, a request or a timewait socket.
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    let reason = if filt!(tp_args) & tp_args::RESET_REASON != 0 {
        ctx.arg::<u64>(2) as u32
    } else {
        0
    };
    let seen = if skb != 0 {
        packet(skb).map(|p| {
            let mut seen = p.seen(kind::RESET, sk, true);
            seen.state = read::<u8>(sk, off!(skc_state)).unwrap_or(0);
            if seen.netns == 0 {
                seen.netns = netns_of_sk(sk);
            }
            seen
        })
    } else {
        Seen::of_socket(kind::RESET, sk, sk)
    };
    if let Some(mut seen) = seen {
        seen.arg = reason as i64;
        let key = health::key(health::RESET, 0, seen.state, family_slot(seen.family));
        report(&seen, key);
    }
    0
}

/// `(sk)`: an RST arrived for `sk`.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    if let Some(mut seen) = Seen::of_socket(kind::RESET, sk, sk) {
        seen.ret = 1;
        let key = health::key(health::RESET, 1, seen.state, family_slot(seen.family));
        report(&seen, key);
    }
    0
}

/// Whether packet `p` leaves from socket `sk`'s own endpoint.
#[inline(always)]
fn sent_by(sk: u64, p: &Packet) -> bool {
    let mut common = SkCommon::empty();
    if common.load(sk).is_none() {
        return false;
    }
    let own_port: u16 = common.get(off!(skc_num)).unwrap_or(0);
    if own_port != p.sport {
        return false;
    }
    let (laddr, raddr) = addresses(&common, p.family);
    if laddr != [0; 2] {
        p.src == laddr
    } else {
        raddr != [0; 2] && p.dst == raddr
    }
}

/// `(skb, location, reason, rx_sk)`: a packet dropped (`kfree_skb` with a reason; a packet
/// consumed normally goes to `consume_skb` instead). Only TCP and UDP over IP are reported.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb(ctx: RawTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let reason = ctx.arg::<u64>(2) as u32;
    let quiet = filt!(quiet_drops);
    if reason != 0 && (reason == quiet[0] || reason == quiet[1]) {
        return 0;
    }
    let rx_sk: u64 = if filt!(tp_args) & tp_args::DROP_RX_SK != 0 {
        ctx.arg(3)
    } else {
        0
    };
    let Some(p) = packet(skb) else {
        return 0;
    };
    let sk = if rx_sk != 0 {
        rx_sk
    } else {
        read::<u64>(skb, off!(skb_sk)).unwrap_or(0)
    };
    // Received, unless it leaves from the socket's own endpoint (its port and address as
    // the source; a socket bound to the wildcard: sent to its peer). Ports alone cannot tell:
    // NTP, mDNS or IKE send from the port they send to.
    let received = rx_sk != 0 || sk == 0 || !sent_by(sk, &p);
    let mut seen = p.seen(kind::DROP, sk, received);
    seen.state = read::<u8>(sk, off!(skc_state)).unwrap_or(0);
    if seen.netns == 0 {
        seen.netns = netns_of_sk(sk);
    }
    seen.arg = reason as i64;
    let slot = if reason > 255 { 255 } else { reason as u8 };
    let key = health::key(
        health::DROP,
        slot,
        stats::proto_slot(seen.protocol) as u8,
        family_slot(seen.family),
    );
    report(&seen, key);
    0
}
