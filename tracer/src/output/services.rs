//! Ports named by their service, as the system's services database names them (`/etc/services`
//! through glibc's NSS: 80/tcp is `http`, 53/udp is `domain`), the way a URL's default port is
//! taught. The sinks take the lookup as a [`PortNames`] value: [`system`] on a real run,
//! [`standard`] (a fixed table) where output must not depend on the machine (snapshot tests).
//!
//! Any user can make tracer meet any port, so lookups are cached per (port, protocol): at most
//! 65,536 × 2 keys, each resolved once. A machine without a services database gives no names
//! and no error. Names are bytes from a file: they go through [`crate::text::decode`] here and
//! are escaped at the sinks like every other name.
use std::collections::HashMap;
use std::ffi::{c_char, c_int};
use std::sync::{Mutex, OnceLock};

pub use crate::model::types::PortNames;
use crate::model::types::Proto;

/// The first buffer for one entry (name, aliases, protocol); doubled on ERANGE up to
/// [`MAX_BUFFER`], past which the entry counts as unnamed.
const FIRST_BUFFER: usize = 1024;
const MAX_BUFFER: usize = 64 * 1024;

extern "C" {
    // glibc's reentrant lookup (netdb.h); the libc crate declares only the non-reentrant
    // `getservbyport`, whose static result another thread could overwrite.
    fn getservbyport_r(
        port: c_int,
        proto: *const c_char,
        result_buf: *mut libc::servent,
        buf: *mut c_char,
        buflen: usize,
        result: *mut *mut libc::servent,
    ) -> c_int;
}

/// Every (port, protocol) looked up so far and its name, if any.
type Cache = HashMap<(u16, Proto), Option<&'static str>>;

/// The service the system's database names `port`/`proto` after (None: unnamed, not TCP or
/// UDP, port 0, or no database). Cached: each (port, protocol) is looked up once.
pub fn system(port: u16, proto: Proto) -> Option<&'static str> {
    if port == 0 || !matches!(proto, Proto::Tcp | Proto::Udp) {
        return None;
    }
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(known) = cache.lock().ok()?.get(&(port, proto)) {
        return *known;
    }
    // Resolved outside the lock (a lookup reads a file); a race resolves a key twice, and the
    // first answer stays.
    let name = resolve(port, proto).map(|bytes| -> &'static str {
        // Bounded: one name per (port, protocol) key, kept for the life of the process.
        Box::leak(crate::text::decode(&bytes).into_boxed_str())
    });
    *cache.lock().ok()?.entry((port, proto)).or_insert(name)
}

/// The entry's official name as bytes, straight from glibc.
fn resolve(port: u16, proto: Proto) -> Option<Vec<u8>> {
    let proto: &[u8] = match proto {
        Proto::Tcp => b"tcp\0",
        Proto::Udp => b"udp\0",
        Proto::Other(_) => return None,
    };
    let mut size = FIRST_BUFFER;
    loop {
        let mut buf = vec![0 as c_char; size];
        // SAFETY: servent is plain C data; all-zero is a valid (empty) value.
        let mut entry: libc::servent = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::servent = std::ptr::null_mut();
        // SAFETY: `proto` is NUL-terminated; `entry`, `buf` (of `buf.len()` bytes) and `result`
        // are ours and outlive the call; glibc writes the entry's strings into `buf` only.
        // The port goes in network byte order, as getservbyport_r(3) wants.
        let status = unsafe {
            getservbyport_r(
                c_int::from(port.to_be()),
                proto.as_ptr().cast(),
                &mut entry,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if status == libc::ERANGE && size < MAX_BUFFER {
            size *= 2;
            continue;
        }
        if status != 0 || result.is_null() || entry.s_name.is_null() {
            return None;
        }
        // SAFETY: on success `s_name` points at a NUL-terminated string inside `buf`, which
        // is still alive here.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.s_name) };
        return Some(name.to_bytes().to_vec()).filter(|n| !n.is_empty());
    }
}

/// A fixed table of a few standard entries, spelled as Debian's `/etc/services` spells them:
/// output that must read the same on every machine (snapshot tests).
pub fn standard(port: u16, proto: Proto) -> Option<&'static str> {
    match (port, proto) {
        (22, Proto::Tcp) => Some("ssh"),
        (53, Proto::Tcp | Proto::Udp) => Some("domain"),
        (80, Proto::Tcp) => Some("http"),
        (123, Proto::Udp) => Some("ntp"),
        (443, Proto::Tcp | Proto::Udp) => Some("https"),
        (8080, Proto::Tcp) => Some("http-alt"),
        _ => None,
    }
}

/// `(https, well-known)`, `(registered)`: a port's service, if named, before its IANA class.
pub fn with_class(names: PortNames, port: u16, proto: Proto, class: &str) -> String {
    label(names(port, proto), class)
}

/// `https, well-known` for a named service, `registered` for an unnamed one.
pub fn label(service: Option<&str>, class: &str) -> String {
    match service {
        Some(service) => format!("{service}, {class}"),
        None => class.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_standard_ports_from_the_system_database() {
        // Every Linux distribution's services database has these.
        assert_eq!(system(80, Proto::Tcp), Some("http"));
        assert_eq!(system(443, Proto::Tcp), Some("https"));
        // Cached: the same answer again.
        assert_eq!(system(443, Proto::Tcp), Some("https"));
    }

    #[test]
    fn an_unknown_port_or_protocol_has_no_name() {
        assert_eq!(system(0, Proto::Tcp), None);
        assert_eq!(system(80, Proto::Other(1)), None);
        // No standard service lives on 65000 (IANA's dynamic range).
        assert_eq!(system(65000, Proto::Tcp), None);
        assert_eq!(resolve(65000, Proto::Udp), None);
    }

    #[test]
    fn the_fixed_table_matches_the_system_for_the_web_ports() {
        for (port, proto) in [(80, Proto::Tcp), (443, Proto::Tcp)] {
            assert_eq!(standard(port, proto), system(port, proto));
        }
    }

    #[test]
    fn with_class_puts_the_service_first() {
        assert_eq!(
            with_class(standard, 443, Proto::Tcp, "well-known"),
            "https, well-known"
        );
        assert_eq!(
            with_class(standard, 8081, Proto::Tcp, "registered"),
            "registered"
        );
    }
}
