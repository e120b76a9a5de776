//! The `event` record of `--json`, written field by field: the hot path of `watch --json`.
//! serde's derived serializer escapes every key and value byte by byte (a quarter of the
//! agent's CPU under load); here the keys are literals, numbers go through `itoa`, and only a
//! string that needs escaping goes through serde_json. The derived `Serialize` on
//! [`Event`] stays the reference: a test holds the two byte-identical. The ports' service names
//! (`lport_service`, `rport_service`) are the sink's, looked up through `names`.
use std::{io::Write as _, net::IpAddr};

use crate::model::{event::SockId, types::PortNames, Event};

/// The service names of an event's ports: the local port's, and the remote port's when there
/// is a remote end.
pub fn services(e: &Event, names: PortNames) -> (Option<&'static str>, Option<&'static str>) {
    let remote = e.rport_class.and_then(|_| names(e.rport, e.proto));
    (names(e.lport, e.proto), remote)
}

/// Appends `e` as one JSON object (no newline) to `out`.
pub fn write_event(out: &mut Vec<u8>, e: &Event, names: PortNames) {
    let (lport_service, rport_service) = services(e, names);
    out.reserve(768);
    out.extend_from_slice(b"{\"type\":");
    name(out, "event");
    out.extend_from_slice(b",\"ts_ns\":");
    uint(out, e.ts_ns);
    out.extend_from_slice(b",\"event\":");
    name(out, e.event.name());
    out.extend_from_slice(b",\"pid\":");
    opt_int(out, e.pid);
    out.extend_from_slice(b",\"tid\":");
    opt_int(out, e.tid);
    out.extend_from_slice(b",\"comm\":");
    opt_string(out, e.comm.as_deref());
    out.extend_from_slice(b",\"thread\":");
    opt_string(out, e.thread.as_deref());
    out.extend_from_slice(b",\"uid\":");
    opt_int(out, e.uid);
    out.extend_from_slice(b",\"netns\":");
    int(out, e.netns);
    out.extend_from_slice(b",\"fd\":");
    opt_int(out, e.fd);
    out.extend_from_slice(b",\"proto\":");
    name(out, e.proto.name());
    out.extend_from_slice(b",\"family\":");
    name(out, e.family.name());
    out.extend_from_slice(b",\"laddr\":");
    ip(out, &e.laddr);
    out.extend_from_slice(b",\"lport\":");
    int(out, e.lport);
    out.extend_from_slice(b",\"raddr\":");
    ip(out, &e.raddr);
    out.extend_from_slice(b",\"rport\":");
    int(out, e.rport);
    out.extend_from_slice(b",\"ret\":");
    opt_int(out, e.ret);
    out.extend_from_slice(b",\"errno\":");
    opt_name(out, e.errno.as_deref());
    out.extend_from_slice(b",\"backlog\":");
    opt_int(out, e.backlog);
    out.extend_from_slice(b",\"how\":");
    opt_name(out, e.how);
    out.extend_from_slice(b",\"bytes\":");
    opt_int(out, e.bytes);
    out.extend_from_slice(b",\"old_state\":");
    opt_name(out, e.old_state.map(|s| s.name()));
    out.extend_from_slice(b",\"state\":");
    opt_name(out, e.state.map(|s| s.name()));
    port_classes(out, e, lport_service, rport_service);
    out.extend_from_slice(b",\"sock\":");
    sock(out, e.sock);
    out.extend_from_slice(b",\"listener\":");
    match e.listener {
        Some(listener) => sock(out, listener),
        None => null(out),
    }
    out.extend_from_slice(b",\"bad_sockaddr\":");
    boolean(out, e.bad_sockaddr);
    out.extend_from_slice(b",\"retransmit\":");
    opt_name(out, e.retransmit);
    out.extend_from_slice(b",\"reset\":");
    opt_name(out, e.reset);
    out.extend_from_slice(b",\"reason\":");
    opt_string(out, e.reason.as_deref());
    out.extend_from_slice(b",\"connect_ns\":");
    opt_uint(out, e.connect_ns);
    out.extend_from_slice(b",\"syn_retransmits\":");
    opt_int(out, e.syn_retransmits);
    out.extend_from_slice(b",\"accept_wait_ns\":");
    opt_uint(out, e.accept_wait_ns);
    out.extend_from_slice(b",\"handshake_ns\":");
    opt_uint(out, e.handshake_ns);
    out.extend_from_slice(b",\"lifetime_ns\":");
    opt_uint(out, e.lifetime_ns);
    let fields = crate::model::container::ContainerFields(e.container.as_deref());
    for (key, value) in crate::model::container::ContainerFields::KEYS
        .iter()
        .zip(fields.values())
    {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        opt_string(out, value);
    }
    out.push(b'}');
}

/// The ports' classes, services and the namespace's ephemeral range.
fn port_classes(
    out: &mut Vec<u8>,
    e: &Event,
    lport_service: Option<&str>,
    rport_service: Option<&str>,
) {
    out.extend_from_slice(b",\"lport_class\":");
    name(out, e.lport_class);
    out.extend_from_slice(b",\"lport_service\":");
    opt_string(out, lport_service);
    out.extend_from_slice(b",\"lport_in_ephemeral_range\":");
    opt_bool(out, e.lport_in_ephemeral_range);
    out.extend_from_slice(b",\"lport_kernel_chosen\":");
    boolean(out, e.lport_kernel_chosen);
    out.extend_from_slice(b",\"rport_class\":");
    opt_name(out, e.rport_class);
    out.extend_from_slice(b",\"rport_service\":");
    opt_string(out, rport_service);
    out.extend_from_slice(b",\"rport_in_ephemeral_range\":");
    opt_bool(out, e.rport_in_ephemeral_range);
    out.extend_from_slice(b",\"ephemeral_range\":");
    match e.ephemeral_range {
        Some((low, high)) => {
            out.push(b'[');
            int(out, low);
            out.push(b',');
            int(out, high);
            out.push(b']');
        }
        None => null(out),
    }
}

fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"null");
}

/// An integer's decimal digits. Room for them is made with a fixed-size append (inlined, where
/// appending a slice of varying length calls `memmove`: a sixth of the agent's CPU, in ~25
/// small copies per event) and the digits are written into it in place — never built in a
/// block and copied, whose narrow stores a wide load cannot forward from (the stall took half
/// of this function's time).
fn int(out: &mut Vec<u8>, n: impl Into<i64>) {
    let n: i64 = n.into();
    if n < 0 {
        out.push(b'-');
    }
    uint(out, n.unsigned_abs());
}

fn uint(out: &mut Vec<u8>, mut n: u64) {
    /// "00" to "99": two digits per division.
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let digits = n.checked_ilog10().map_or(1, |d| d as usize + 1);
    let len = out.len();
    out.extend_from_slice(&[b'0'; 20]);
    out.truncate(len + digits);
    let text = &mut out[len..];
    let mut at = digits;
    while at >= 2 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        at -= 2;
        text[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if at == 1 {
        text[0] = b'0' + n as u8;
    }
}

/// `a.b.c.d`, a byte at a time (the room was reserved for the whole line).
fn ipv4(out: &mut Vec<u8>, octets: [u8; 4]) {
    for (i, octet) in octets.into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if octet >= 100 {
            out.push(b'0' + octet / 100);
        }
        if octet >= 10 {
            out.push(b'0' + octet / 10 % 10);
        }
        out.push(b'0' + octet % 10);
    }
}

/// A socket identity, `"0x…"`.
fn sock(out: &mut Vec<u8>, id: SockId) {
    out.push(b'"');
    id.write_hex(out);
    out.push(b'"');
}

fn opt_int(out: &mut Vec<u8>, n: Option<impl Into<i64>>) {
    match n {
        Some(n) => int(out, n),
        None => null(out),
    }
}

fn opt_uint(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => uint(out, n),
        None => null(out),
    }
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

fn opt_bool(out: &mut Vec<u8>, b: Option<bool>) {
    match b {
        Some(b) => boolean(out, b),
        None => null(out),
    }
}

/// A JSON string: copied as is when nothing in it needs escaping (printable ASCII: names,
/// addresses, most commands), escaped otherwise by the terminal-safe JSON writer
/// ([`crate::text::json`]: DEL, C1 and bidi controls as `\\u` escapes too).
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        crate::text::json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
    }
}

/// A string tracer made itself (event, protocol and state names, errno names, socket
/// identities): never anything to escape.
fn name(out: &mut Vec<u8>, s: &str) {
    debug_assert!(s
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'));
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

fn opt_name(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => name(out, s),
        None => null(out),
    }
}

fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => null(out),
    }
}

fn ip(out: &mut Vec<u8>, addr: &IpAddr) {
    out.push(b'"');
    match addr {
        IpAddr::V4(v4) => ipv4(out, v4.octets()),
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::types::{EventKind, Family, Proto, TcpState};
    use proptest::prelude::*;

    fn written(e: &Event) -> String {
        let mut out = Vec::new();
        write_event(&mut out, e, crate::output::services::standard);
        String::from_utf8(out).unwrap()
    }

    /// The derived serializer's object with the service names serde writes, each right after
    /// its port's class. Unambiguous: in the derived text, `,"key":` (an unescaped quote after
    /// a comma) can only be a key.
    fn reference(e: &Event) -> String {
        let (l, r) = services(e, crate::output::services::standard);
        let mut text = crate::text::json::to_string(&crate::output::wire::Tagged::new("event", e));
        for (before, key, value) in [
            (",\"lport_in_ephemeral_range\":", "lport_service", l),
            (",\"rport_in_ephemeral_range\":", "rport_service", r),
        ] {
            let at = text.find(before).expect("the derived object has the key");
            let field = format!(",\"{key}\":{}", crate::text::json::to_string(&value));
            text.insert_str(at, &field);
        }
        text
    }

    fn base() -> Event {
        Event {
            ts_ns: 1_795_288_817_103_144_754,
            event: EventKind::Connect,
            pid: Some(15476),
            tid: Some(15477),
            comm: Some("curl".into()),
            thread: Some("curl-worker".into()),
            uid: Some(0),
            netns: 4_026_531_833,
            fd: Some(5),
            proto: Proto::Tcp,
            family: Family::V4,
            laddr: "127.0.0.1".parse().unwrap(),
            lport: 41234,
            raddr: "10.0.0.2".parse().unwrap(),
            rport: 80,
            ret: Some(-115),
            errno: Some("EINPROGRESS".into()),
            backlog: None,
            how: None,
            bytes: None,
            old_state: None,
            state: Some(TcpState::SynSent),
            lport_class: "dynamic",
            lport_in_ephemeral_range: Some(true),
            lport_kernel_chosen: true,
            rport_class: Some("well-known"),
            rport_in_ephemeral_range: Some(false),
            ephemeral_range: Some((32768, 60999)),
            sock: SockId(0xffff_8881_310f_8940),
            listener: None,
            bad_sockaddr: false,
            retransmit: None,
            reset: None,
            reason: None,
            connect_ns: Some(1_020_345_678),
            syn_retransmits: Some(1),
            accept_wait_ns: None,
            handshake_ns: None,
            lifetime_ns: None,
            container: Some(std::sync::Arc::new(crate::model::container::Container {
                id: crate::model::container::from_path(
                    "/docker/aef52339d617485564dd9b8adda0ab64bc899e4e338a29cb55cc9574eb93a913",
                ),
                name: Some("web\"1\u{1b}".into()),
                image: Some("busybox".into()),
                pod_name: None,
                pod_namespace: None,
            })),
        }
    }

    #[test]
    fn matches_the_derived_serializer() {
        let e = base();
        assert_eq!(written(&e), reference(&e));
        let unowned = Event {
            pid: None,
            tid: None,
            comm: None,
            thread: None,
            uid: None,
            fd: None,
            errno: None,
            state: None,
            lport_in_ephemeral_range: None,
            rport_class: None,
            rport_in_ephemeral_range: None,
            ephemeral_range: None,
            family: Family::V6,
            laddr: "::1".parse().unwrap(),
            raddr: "2001:db8::ff00:42:8329".parse().unwrap(),
            backlog: Some(4096),
            how: Some("SHUT_RDWR"),
            bytes: Some(0),
            old_state: Some(TcpState::Listen),
            listener: Some(SockId(0xffff_8881_0000_0000)),
            bad_sockaddr: true,
            ret: Some(i64::MIN),
            retransmit: Some("synack"),
            reset: Some("received"),
            reason: Some("TCP_\"odd\u{1b}".into()),
            connect_ns: None,
            syn_retransmits: None,
            accept_wait_ns: Some(u64::MAX),
            handshake_ns: Some(120_000),
            lifetime_ns: Some(0),
            container: None,
            ..base()
        };
        assert_eq!(written(&unowned), reference(&unowned));
        let host = Event {
            container: Some(std::sync::Arc::new(
                crate::model::container::Container::host(),
            )),
            ..base()
        };
        assert_eq!(written(&host), reference(&host));
        assert!(written(&host).contains(r#""container_name":"host""#));
    }

    #[test]
    fn a_service_name_from_the_database_is_escaped() {
        fn odd(_: u16, _: Proto) -> Option<&'static str> {
            Some("h\"t\u{1b}p\\")
        }
        let mut out = Vec::new();
        write_event(&mut out, &base(), odd);
        assert!(!out.contains(&0x1b), "no raw control byte");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["lport_service"], "h\"t\u{1b}p\\");
        assert_eq!(v["rport_service"], "h\"t\u{1b}p\\");
    }

    proptest! {
        /// Any command name (quotes, backslashes, control bytes, non-ASCII) and any numbers
        /// come out exactly as the derived serializer writes them through the safe formatter.
        #[test]
        fn any_comm_and_numbers_match(
            comm in "(?s).{0,16}",
            pid in any::<u32>(),
            ret in any::<Option<i64>>(),
            ts in any::<u64>(),
            v4 in any::<[u8; 4]>(),
            v6 in any::<[u8; 16]>(),
            sk in any::<u64>(),
            listener in any::<Option<u64>>(),
            lport in any::<u16>(),
        ) {
            let e = Event {
                thread: Some(comm.as_str().into()),
                comm: Some(comm.into()),
                pid: Some(pid),
                ret,
                ts_ns: ts,
                laddr: IpAddr::from(v4),
                raddr: IpAddr::from(v6),
                sock: SockId(sk),
                listener: listener.map(SockId),
                lport,
                ..base()
            };
            prop_assert_eq!(written(&e), reference(&e));
        }
    }
}
