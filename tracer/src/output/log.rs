//! The sink of `tracer serve`: no per-event output, only structured log lines (tracing) for
//! what an operator needs to know — attached, snapshot, lost events, ephemeral-port warnings,
//! the summary at exit.
use std::io;

use super::{Sink, SnapshotInfo, Summary};
use crate::model::{ephemeral::Usage, ports::RemoteGroup, Event};

#[derive(Default)]
pub struct LogSink;

impl Sink for LogSink {
    fn ready(&mut self, hooks: &[String]) -> io::Result<()> {
        let path = crate::model::types::KernelPath::of_hooks(hooks).map_or("none", |p| p.name());
        tracing::info!(hooks = hooks.len(), path, "attached");
        Ok(())
    }

    fn event(&mut self, _: &Event) -> io::Result<()> {
        Ok(())
    }

    fn lost(&mut self, new: u64, total: u64) -> io::Result<()> {
        tracing::warn!(new, total, "events lost (ring buffer full)");
        Ok(())
    }

    fn summary(&mut self, s: &Summary) -> io::Result<()> {
        tracing::info!(
            events = s.events,
            lost = s.lost,
            seconds = s.seconds,
            sockets_tracked = s.sockets_tracked,
            evicted = s.evicted.describe().unwrap_or_default(),
            "stopped"
        );
        Ok(())
    }

    fn snapshot(&mut self, s: &SnapshotInfo) -> io::Result<()> {
        tracing::info!(
            sockets = s.sockets,
            namespaces = s.namespaces,
            took_ms = s.took_ms,
            "snapshot of existing sockets"
        );
        Ok(())
    }

    fn ephemeral_warning(&mut self, u: &Usage) -> io::Result<()> {
        tracing::warn!(
            netns = u.netns,
            proto = u.proto.name(),
            scope = %crate::text::escape_log(&u.scope_label()),
            in_use = u.in_use,
            exclusive = u.exclusive,
            headroom = u.headroom,
            range_size = u.range_size,
            failed = u.failed,
            processes = %crate::text::escape_log(&u.processes.join(",")),
            "ephemeral ports near exhaustion"
        );
        Ok(())
    }

    fn ephemeral_report(&mut self, _: &[Usage]) -> io::Result<()> {
        Ok(())
    }

    fn remote_groups(&mut self, _: &[RemoteGroup], _: bool) -> io::Result<()> {
        Ok(())
    }

    fn nat(&mut self, item: &crate::model::nat::NatOutput) -> io::Result<()> {
        if let crate::model::nat::NatOutput::Binding(b) = item {
            tracing::debug!(
                "nat {} {} in {}: {} -> {}",
                b.kind.as_str(),
                b.proto,
                b.netns_name,
                b.original,
                b.translated
            );
        }
        if let crate::model::nat::NatOutput::Pool(p, true) = item {
            let line = crate::text::escape_log(&super::nat::pool_line(p)).into_owned();
            tracing::warn!("{line}");
        }
        if let crate::model::nat::NatOutput::Health(h) = item {
            let line = crate::text::escape_log(&super::nat::health_line(h)).into_owned();
            if h.near_full() {
                tracing::warn!("{line}");
            } else {
                tracing::info!("{line}");
            }
        }
        Ok(())
    }

    fn netns_gone(&mut self, name: &str, inode: u32) -> io::Result<()> {
        tracing::warn!(
            "network namespace {name} (inode {inode}) is gone: its NAT hooks were dropped"
        );
        Ok(())
    }

    fn listen_overflow(&mut self, o: &crate::model::listen::ListenOverflow) -> io::Result<()> {
        tracing::warn!(
            "{}",
            crate::text::escape_log(&super::ports::overflow_line(o))
        );
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where log lines go: stderr, through [`crate::text::escape_log`] — a log line may carry a
/// name any user chose (a process, a namespace), and must not reach the terminal raw.
/// tracing's own colours are off (`with_ansi(false)`): every escape byte on stderr is escaped.
#[derive(Clone, Copy, Default)]
pub struct SafeStderr;

impl io::Write for SafeStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // tracing formats each line whole, from Rust strings: always UTF-8.
        let text = String::from_utf8_lossy(buf);
        io::stderr().write_all(crate::text::escape_log(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for SafeStderr {
    type Writer = SafeStderr;

    fn make_writer(&'a self) -> Self::Writer {
        SafeStderr
    }
}
