//! Reading a conntrack entry (`struct nf_conn`): both tuples and `status` in one probe, and a
//! tuple's endpoints out of that window.
use tracer_ebpf::window::Window;

/// One direction's endpoints (`struct nf_conntrack_tuple`): addresses in network byte order
/// (IPv4 zero-padded), ports in host byte order.
pub struct Tuple {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

/// A 16-byte address at `at` in the window, its IPv4 form zero-padded: built from four
/// 32-bit reads (the tuple's addresses are 4-byte aligned) and held in registers, so no
/// byte-loop `memset`/`memcpy` runs.
#[inline(always)]
fn addr(w: &CtWindow, at: u64, v4: bool) -> [u8; 16] {
    let word = |i: u64| w.get::<u32>(at + 4 * i).unwrap_or(0);
    let words = if v4 {
        [word(0), 0, 0, 0]
    } else {
        [word(0), word(1), word(2), word(3)]
    };
    // SAFETY: both types are 16 bytes of plain integers (the transmute checks the sizes);
    // every byte pattern is a valid `[u8; 16]`.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

/// The tuple at `at` (a `nf_conntrack_tuple`) in the window.
#[inline(always)]
pub fn tuple(w: &CtWindow, at: u64, v4: bool) -> Option<Tuple> {
    Some(Tuple {
        src: addr(w, at + off!(tuple_src_u3), v4),
        dst: addr(w, at + off!(tuple_dst_u3), v4),
        sport: u16::from_be(w.get(at + off!(tuple_src_port))?),
        dport: u16::from_be(w.get(at + off!(tuple_dst_port))?),
    })
}

/// The part of `nf_conn` the program reads — both tuples and `status`, 104 bytes from the
/// original tuple on 6.x — in one probe (fields outside it are read on their own).
pub type CtWindow = Window<13>;

/// Where the window starts in `nf_conn`, and each field's place in it.
#[inline(always)]
pub fn ct_window_base() -> u64 {
    let (orig, status) = (off!(ct_tuple_orig), off!(ct_status));
    if orig < status {
        orig
    } else {
        status
    }
}
