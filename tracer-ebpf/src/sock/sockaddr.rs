//! The caller's socket addresses, read from user memory: a `sockaddr_in`/`sockaddr_in6` of a
//! given length (never read past it), and the name fields of a `user_msghdr`. These layouts
//! are the syscall ABI, fixed for every kernel: the offsets come from `#[repr(C)]` copies of
//! the structs, and compile-time asserts pin them to the ABI's numbers.
use core::mem::offset_of;

use tracer_common::{AF_INET, AF_INET6};
use tracer_ebpf::user::read_user;

/// The syscall ABI's structs, for their offsets only (never built: hence `dead_code`).
#[allow(dead_code)]
mod abi {
    /// `struct sockaddr_in`.
    #[repr(C)]
    pub struct SockaddrIn {
        pub sin_family: u16,
        pub sin_port: u16,
        pub sin_addr: u32,
        pub sin_zero: [u8; 8],
    }

    /// `struct sockaddr_in6`.
    #[repr(C)]
    pub struct SockaddrIn6 {
        pub sin6_family: u16,
        pub sin6_port: u16,
        pub sin6_flowinfo: u32,
        pub sin6_addr: [u8; 16],
        pub sin6_scope_id: u32,
    }

    /// `struct user_msghdr` (what `sendmsg`/`recvmsg` take: user memory, not the kernel's
    /// internal `msghdr`).
    #[repr(C)]
    pub struct UserMsghdr {
        pub msg_name: u64,
        pub msg_namelen: i32,
        pub msg_iov: u64,
        pub msg_iovlen: u64,
        pub msg_control: u64,
        pub msg_controllen: u64,
        pub msg_flags: u32,
    }
}
use abi::{SockaddrIn, SockaddrIn6, UserMsghdr};

/// Both families keep the family at 0 and the port at 2 (network byte order).
const FAMILY: u64 = offset_of!(SockaddrIn, sin_family) as u64;
const PORT: u64 = offset_of!(SockaddrIn, sin_port) as u64;
const IN_ADDR: u64 = offset_of!(SockaddrIn, sin_addr) as u64;
const IN6_ADDR: u64 = offset_of!(SockaddrIn6, sin6_addr) as u64;
/// How much of each a caller must have passed for the fields read here.
const IN_NEEDED: i64 = IN_ADDR as i64 + 4;
const IN6_NEEDED: i64 = IN6_ADDR as i64 + 16;
const MSG_NAME: u64 = offset_of!(UserMsghdr, msg_name) as u64;
const MSG_NAMELEN: u64 = offset_of!(UserMsghdr, msg_namelen) as u64;

// The ABI's numbers (linux/in.h, linux/in6.h, linux/socket.h on 64-bit), so a wrong copy above
// fails the build instead of reading the wrong bytes.
const _: () = assert!(FAMILY == 0 && PORT == 2 && IN_ADDR == 4 && IN_NEEDED == 8);
const _: () = assert!(offset_of!(SockaddrIn6, sin6_family) == 0);
const _: () = assert!(offset_of!(SockaddrIn6, sin6_port) == PORT as usize);
const _: () = assert!(IN6_ADDR == 8 && IN6_NEEDED == 24);
const _: () = assert!(core::mem::size_of::<SockaddrIn>() == 16);
const _: () = assert!(core::mem::size_of::<SockaddrIn6>() == 28);
const _: () = assert!(MSG_NAME == 0 && MSG_NAMELEN == 8);
const _: () = assert!(core::mem::size_of::<UserMsghdr>() == 56);

/// Parses a user `sockaddr_in`/`sockaddr_in6` of `len` bytes without reading past it: the
/// port and the address (as two words). None when the buffer is unusable.
#[inline(always)]
pub fn read_user_sockaddr(uaddr: u64, len: i64) -> Option<(u16, [u64; 2])> {
    // Longer than a sockaddr_storage (128 bytes): the kernel refuses it before reading it.
    const SOCKADDR_STORAGE: i64 = 128;
    if uaddr == 0 || !(2..=SOCKADDR_STORAGE).contains(&len) {
        return None;
    }
    let family: u16 = read_user(uaddr + FAMILY)?;
    match family {
        AF_INET if len >= IN_NEEDED => {
            let port = u16::from_be(read_user(uaddr + PORT)?);
            let a: u32 = read_user(uaddr + IN_ADDR)?;
            Some((port, [a as u64, 0]))
        }
        AF_INET6 if len >= IN6_NEEDED => {
            let port = u16::from_be(read_user(uaddr + PORT)?);
            let a: [u64; 2] = read_user(uaddr + IN6_ADDR)?;
            Some((port, a))
        }
        0 => Some((0, [0, 0])), // AF_UNSPEC: connect() used to dissolve a UDP association
        _ => None,
    }
}

/// The peer-address fields of a `struct user_msghdr` at `msg`: `msg_name` and `msg_namelen`.
#[inline(always)]
pub fn msg_name(msg: u64) -> (u64, u64) {
    let name: u64 = read_user(msg + MSG_NAME).unwrap_or(0);
    let len: i32 = read_user(msg + MSG_NAMELEN).unwrap_or(0);
    (name, len as i64 as u64)
}
