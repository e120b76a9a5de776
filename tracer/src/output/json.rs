//! JSON lines: `{"type":"event",…}` per event, plus `ready`, `lost` and `summary` records.
use std::io::{self, Write};

use serde_json::json;

use super::{ports::write_usage_json, services, Sink, SnapshotInfo, Summary};
use crate::model::{ephemeral::Usage, ports::RemoteGroup, types::PortNames, Event};

/// Event lines are handed to the writer once this many bytes are built (a `BufWriter` of
/// 64 KiB passes a block this large straight through).
const SPILL_AT: usize = 64 * 1024;

pub struct JsonSink<W: Write> {
    out: W,
    /// Event lines, built here and handed to `out` in blocks of [`SPILL_AT`] bytes or more
    /// (one copy per event fewer than writing each line through a `BufWriter`).
    lines: Vec<u8>,
    /// Names the ports' services (`lport_service`, `rport_service`).
    names: PortNames,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W) -> Self {
        JsonSink {
            out,
            lines: Vec::with_capacity(SPILL_AT + 1024),
            names: services::system,
        }
    }

    /// Service names from `names` instead of the system's database (tests: a fixed table).
    pub fn with_names(mut self, names: PortNames) -> Self {
        self.names = names;
        self
    }

    /// The event lines built so far, to `out`.
    fn spill(&mut self) -> io::Result<()> {
        if !self.lines.is_empty() {
            let written = self.out.write_all(&self.lines);
            // Written or not, the block is gone: a retry (the drop) would repeat the part that
            // got through.
            self.lines.clear();
            written?;
        }
        Ok(())
    }

    fn line(&mut self, value: &impl serde::Serialize) -> io::Result<()> {
        self.spill()?;
        crate::text::json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn ready(&mut self, hooks: &[String]) -> io::Result<()> {
        let mut ready = json!({"type": "ready", "hooks": hooks});
        if let Some(path) = crate::model::types::KernelPath::of_hooks(hooks) {
            // Which kernel path the socket events come from (none: NAT alone).
            ready["path"] = path.name().into();
        }
        self.line(&ready)?;
        self.out.flush()
    }

    fn event(&mut self, event: &Event) -> io::Result<()> {
        super::json_event::write_event(&mut self.lines, event, self.names);
        self.lines.push(b'\n');
        if self.lines.len() >= SPILL_AT {
            self.spill()?;
        }
        Ok(())
    }

    fn lost(&mut self, new: u64, total: u64) -> io::Result<()> {
        self.line(&json!({"type": "lost", "lost": new, "total_lost": total}))?;
        self.out.flush()
    }

    fn summary(&mut self, s: &Summary) -> io::Result<()> {
        let mut record = serde_json::to_value(s)?;
        record["type"] = "summary".into();
        self.line(&record)?;
        self.out.flush()
    }

    fn snapshot(&mut self, info: &SnapshotInfo) -> io::Result<()> {
        let mut record = serde_json::to_value(info)?;
        record["type"] = "snapshot".into();
        self.line(&record)?;
        self.out.flush()
    }

    fn ephemeral_warning(&mut self, usage: &Usage) -> io::Result<()> {
        self.spill()?;
        write_usage_json(&mut self.out, "ephemeral_warning", usage)?;
        self.out.flush()
    }

    fn ephemeral_report(&mut self, usage: &[Usage]) -> io::Result<()> {
        self.spill()?;
        for u in usage {
            write_usage_json(&mut self.out, "ephemeral", u)?;
        }
        Ok(())
    }

    fn remote_groups(&mut self, groups: &[RemoteGroup], last: bool) -> io::Result<()> {
        // JSON consumers get the whole picture once, at exit.
        if last {
            self.spill()?;
            super::ports::write_groups_json(&mut self.out, groups, self.names)?;
        }
        Ok(())
    }

    fn nat(&mut self, item: &crate::model::nat::NatOutput) -> io::Result<()> {
        self.spill()?;
        super::nat::write_json(&mut self.out, item, self.names)
    }

    fn netns_gone(&mut self, name: &str, inode: u32) -> io::Result<()> {
        self.line(&json!({"type": "netns_gone", "netns": inode, "netns_name": name}))?;
        self.out.flush()
    }

    fn listen_overflow(&mut self, o: &crate::model::listen::ListenOverflow) -> io::Result<()> {
        self.line(&super::wire::Tagged::new("listen_overflow", o))?;
        self.out.flush()
    }

    fn proxied(&mut self, p: &crate::model::proxy::Proxied) -> io::Result<()> {
        self.line(&super::wire::Tagged::new("proxied", p))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.spill()?;
        self.out.flush()
    }
}

/// Lines still held are handed to the writer when the sink goes (an error path that returns
/// without a flush loses no event; nowhere to report a failure here, so a caller that cares
/// flushes first).
impl<W: Write> Drop for JsonSink<W> {
    fn drop(&mut self) {
        let _ = self.spill();
        let _ = self.out.flush();
    }
}
