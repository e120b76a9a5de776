//! Sinks: where enriched events go. A human table (the field's column conventions, colour only
//! on a terminal) or JSON lines (one object per line, stable field names).
pub mod human;
pub mod json;

use std::io;

use crate::model::Event;

/// Totals printed when tracer stops.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Summary {
    pub events: u64,
    pub lost: u64,
    pub undecodable: u64,
    pub seconds: f64,
    /// Sockets still in the socket table at exit (open sockets, or closes still in flight).
    pub sockets_tracked: usize,
}

pub trait Sink {
    /// Called once the programs are attached: from here on every socket call is seen.
    fn ready(&mut self, hooks: &[String]) -> io::Result<()>;
    fn event(&mut self, event: &Event) -> io::Result<()>;
    /// The kernel's lost-event counter moved by `new` (to `total`).
    fn lost(&mut self, new: u64, total: u64) -> io::Result<()>;
    fn summary(&mut self, summary: &Summary) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}
