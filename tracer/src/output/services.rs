//! Ports named by their service, as the system's services database names them (`/etc/services`
//! through glibc's NSS: 80/tcp is `http`, 53/udp is `domain`), the way a URL's default port is
//! taught. The sinks take the lookup as a [`PortNames`] value: [`system`] on a real run,
//! [`standard`] (a fixed table) where output must not depend on the machine (snapshot tests).
//!
//! The database is read once, whole, at the first lookup (`getservent_r`: a few hundred
//! entries), so a port is one map lookup afterwards. (Looking each port up on its own,
//! `getservbyport_r` scanned the file for every new ephemeral port — 15 % of `watch --json`'s
//! CPU under a connection flood.) The first entry for a (port, protocol) wins, as it does for
//! `getservbyport`. A machine without a services database gives no names and no error. Names
//! are bytes from a file: they go through [`crate::text::decode`] here and are escaped at the
//! sinks like every other name.
use std::ffi::{c_char, c_int};
use std::sync::OnceLock;

pub use crate::model::types::PortNames;
use crate::model::types::Proto;

/// The first buffer for one entry (name, aliases, protocol); doubled on ERANGE up to
/// [`MAX_BUFFER`]. An entry larger than that ends the read (glibc does not step past an entry
/// it could not return), keeping the names read so far.
const FIRST_BUFFER: usize = 1024;
const MAX_BUFFER: usize = 64 * 1024;
/// At most this many entries are kept (a services file is a few hundred lines; a huge or
/// hostile one cannot make tracer grow without bound).
const MAX_ENTRIES: usize = 16 * 1024;

extern "C" {
    // glibc's reentrant enumeration (netdb.h); the libc crate declares only the non-reentrant
    // `getservent`, whose static result another thread could overwrite.
    fn getservent_r(
        result_buf: *mut libc::servent,
        buf: *mut c_char,
        buflen: usize,
        result: *mut *mut libc::servent,
    ) -> c_int;
    fn setservent(stayopen: c_int);
    fn endservent();
}

/// Every named (port, protocol) of the system's database, and a bit per (port, protocol) that
/// says whether it is named: most ports an event shows (ephemeral ones) are not, and a bit test
/// answers them without hashing.
#[derive(Default)]
struct Database {
    names: foldhash::HashMap<(u16, Proto), &'static str>,
    named: Vec<u64>,
}

impl Database {
    /// The bit of `port`/`proto` (TCP or UDP) in `named`.
    fn bit(port: u16, proto: Proto) -> (usize, u64) {
        let at = usize::from(port) + if proto == Proto::Udp { 1 << 16 } else { 0 };
        (at / 64, 1 << (at % 64))
    }

    fn get(&self, port: u16, proto: Proto) -> Option<&'static str> {
        let (word, mask) = Self::bit(port, proto);
        if self.named.get(word).is_none_or(|w| w & mask == 0) {
            return None;
        }
        self.names.get(&(port, proto)).copied()
    }

    fn insert(&mut self, port: u16, proto: Proto, name: &[u8]) {
        let (word, mask) = Self::bit(port, proto);
        if self.named.is_empty() {
            self.named = vec![0; (2 << 16) / 64];
        }
        self.named[word] |= mask;
        self.names.entry((port, proto)).or_insert_with(|| {
            // Bounded: at most MAX_ENTRIES names, kept for the life of the process.
            Box::leak(crate::text::decode(name).into_boxed_str())
        });
    }

    fn len(&self) -> usize {
        self.names.len()
    }
}

/// The service the system's database names `port`/`proto` after (None: unnamed, not TCP or
/// UDP, port 0, or no database).
pub fn system(port: u16, proto: Proto) -> Option<&'static str> {
    if port == 0 || !matches!(proto, Proto::Tcp | Proto::Udp) {
        return None;
    }
    static DATABASE: OnceLock<Database> = OnceLock::new();
    DATABASE.get_or_init(read_database).get(port, proto)
}

/// The whole database, read once.
fn read_database() -> Database {
    // Only one thread ever enumerates (this runs inside `OnceLock::get_or_init`, and nothing
    // else in tracer calls getservent), so glibc's shared enumeration position is ours.
    let mut database = Database::default();
    let mut buf = vec![0 as c_char; FIRST_BUFFER];
    // SAFETY: no arguments but a flag; it (re)opens the database.
    unsafe { setservent(0) };
    while database.len() < MAX_ENTRIES {
        // SAFETY: servent is plain C data; all-zero is a valid (empty) value.
        let mut entry: libc::servent = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::servent = std::ptr::null_mut();
        // SAFETY: `entry`, `buf` (of `buf.len()` bytes) and `result` are ours and outlive the
        // call; glibc writes the entry's strings into `buf` only.
        let status = unsafe { getservent_r(&mut entry, buf.as_mut_ptr(), buf.len(), &mut result) };
        if status == libc::ERANGE && buf.len() < MAX_BUFFER {
            // The same entry again with room for it.
            buf = vec![0 as c_char; buf.len() * 2];
            continue;
        }
        if status != 0 || result.is_null() {
            break;
        }
        if entry.s_name.is_null() || entry.s_proto.is_null() {
            continue;
        }
        // SAFETY: on success `s_name` and `s_proto` point at NUL-terminated strings inside
        // `buf`, which is alive here.
        let (name, proto) = unsafe {
            (
                std::ffi::CStr::from_ptr(entry.s_name).to_bytes(),
                std::ffi::CStr::from_ptr(entry.s_proto).to_bytes(),
            )
        };
        let proto = match proto {
            b"tcp" => Proto::Tcp,
            b"udp" => Proto::Udp,
            _ => continue,
        };
        // `s_port` holds the port in network byte order in its low 16 bits.
        let port = u16::from_be(entry.s_port as u16);
        if name.is_empty() || port == 0 {
            continue;
        }
        database.insert(port, proto, name);
    }
    // SAFETY: closes what setservent opened.
    unsafe { endservent() };
    database
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
        assert_eq!(system(53, Proto::Udp), Some("domain"));
        // Read once: the same answer again.
        assert_eq!(system(443, Proto::Tcp), Some("https"));
    }

    #[test]
    fn an_unknown_port_or_protocol_has_no_name() {
        assert_eq!(system(0, Proto::Tcp), None);
        assert_eq!(system(80, Proto::Other(1)), None);
        // No standard service lives on 65000 (IANA's dynamic range).
        assert_eq!(system(65000, Proto::Tcp), None);
        assert_eq!(system(65000, Proto::Udp), None);
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
