//! A closed stdout (`tracer nat | head`) ends tracer quietly with status 0. Rust ignores
//! SIGPIPE, so a write to a pipe nobody reads fails with EPIPE: `main` turns that error into a
//! clean exit when stdout really is closed ([`is_closed`]). Commands that may stay silent for
//! long (no NAT traffic, an idle `watch`) notice at once through [`on_close`].
use std::os::fd::AsFd;

use crate::kernel::prereq::{self, Keep};

/// Whether stdout's reader has gone: poll(2) reports POLLERR on a pipe without readers and
/// POLLHUP on a socket whose peer closed.
pub fn is_closed() -> bool {
    gone(0)
}

/// Waits up to `timeout_ms` (-1: for ever) for stdout's reader to go.
fn gone(timeout_ms: i32) -> bool {
    loop {
        // No events asked for: only POLLERR, POLLHUP and POLLNVAL can end the wait.
        let mut fd = libc::pollfd {
            fd: libc::STDOUT_FILENO,
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut fd, 1, timeout_ms) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return n > 0 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0;
    }
}

/// Whether stdout is a pipe or a socket: the only kinds a reader can close under us.
fn closable() -> bool {
    nix::sys::stat::fstat(std::io::stdout().as_fd()).is_ok_and(|st| {
        let kind = st.st_mode & libc::S_IFMT;
        kind == libc::S_IFIFO || kind == libc::S_IFSOCK
    })
}

/// Runs `then` once stdout's reader is gone, from a thread that waits for it in poll(2)
/// holding no capabilities. Nothing happens when stdout is a file or a terminal.
pub fn on_close(then: impl FnOnce() + Send + 'static) {
    if !closable() {
        return;
    }
    let watcher = std::thread::Builder::new()
        .name("stdout-watch".into())
        .spawn(move || {
            if let Err(e) = prereq::restrict_thread(Keep::NOTHING) {
                tracing::warn!("stdout watcher: dropping capabilities: {e}");
            }
            if gone(-1) {
                then();
            }
        });
    if let Err(e) = watcher {
        tracing::debug!("no stdout watcher: {e}");
    }
}

/// Whether `err` (or anything in its chain of sources) is a write to a closed pipe.
pub fn is_broken_pipe(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        next = e.source();
    }
    false
}
