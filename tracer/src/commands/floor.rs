//! `tracer __floor [--syscalls]`: the benchmark's floor row. The same hooks `watch` attaches
//! on its path (UDP datagram hooks included), each with a program that does nothing, held
//! until SIGINT or SIGTERM: what the kernel's hooks cost before any of tracer's work.
use nix::sys::signal::{SigSet, Signal};

use crate::error::{Error, Result};
use crate::kernel::loader::{LoadOptions, SockProbes};
use crate::model::types::KernelPath;

pub fn run(syscalls: bool) -> Result<()> {
    // Blocked before loading, so a signal sent once the hooks are up waits for `wait` below.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .map_err(|e| Error::io("blocking SIGINT and SIGTERM", e.into()))?;
    let path = if syscalls {
        KernelPath::Syscalls
    } else {
        KernelPath::Sockets
    };
    let probes = SockProbes::load(&LoadOptions {
        filter: tracer_common::KernelFilter {
            udp_data: 1,
            ..Default::default()
        },
        pids: Vec::new(),
        ringbuf_bytes: 64 * 1024,
        path,
        data: false,
        floor: true,
        health: crate::model::types::Health::Off,
    })?;
    eprintln!(
        "tracer: floor: {} empty programs attached on the {} path (Ctrl-C detaches)",
        probes.attached.len(),
        path.name()
    );
    signals
        .wait()
        .map_err(|e| Error::io("waiting for SIGINT or SIGTERM", e.into()))?;
    drop(probes);
    Ok(())
}
