//! JSON lines: `{"type":"event",…}` per event, plus `ready`, `lost` and `summary` records.
use std::io::{self, Write};

use serde_json::json;

use super::{Sink, Summary};
use crate::model::Event;

pub struct JsonSink<W: Write> {
    out: W,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W) -> Self {
        JsonSink { out }
    }

    fn line(&mut self, value: &impl serde::Serialize) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn ready(&mut self, hooks: &[String]) -> io::Result<()> {
        self.line(&json!({"type": "ready", "hooks": hooks}))?;
        self.out.flush()
    }

    fn event(&mut self, event: &Event) -> io::Result<()> {
        self.line(event)
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

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
