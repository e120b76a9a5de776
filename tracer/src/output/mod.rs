//! Sinks: where enriched events go. A human table (the field's column conventions, colour only
//! on a terminal) or JSON lines (one object per line, stable field names).

pub mod human;
pub mod json;
mod json_event;
pub mod log;
pub mod nat;
pub mod ports;
pub mod services;
pub mod story;
pub mod story_steps;
pub mod tui;
mod wire;

#[cfg(test)]
mod golden_tests;

use std::io;

use crate::model::{ephemeral::Usage, nat::NatOutput, ports::RemoteGroup, Event};

/// What the start-up snapshot found.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct SnapshotInfo {
    /// Sockets that existed before tracer attached.
    pub sockets: usize,
    pub namespaces: usize,
    /// Processes holding at least one socket.
    pub processes: usize,
    pub took_ms: f64,
}

/// Totals printed when tracer stops.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Summary {
    pub events: u64,
    pub lost: u64,
    pub undecodable: u64,
    pub seconds: f64,
    /// Sockets still in the socket table at exit (open sockets, or closes still in flight).
    pub sockets_tracked: usize,
    /// Entries the bounded tables pushed out to stay under their caps, by table.
    pub evicted: crate::model::evicted::Evicted,
    /// Runs of the retransmit, reset and drop hooks the kernel skipped (nested in
    /// themselves): not socket events lost, but health events perhaps missed.
    #[serde(skip_serializing_if = "is_zero")]
    pub health_skipped: u64,
    /// A userland proxy's second connections not joined to their client: several clients
    /// waited on that proxy at once.
    #[serde(skip_serializing_if = "is_zero")]
    pub proxies_ambiguous: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub trait Sink {
    /// Called once the programs are attached: from here on every socket call is seen.
    fn ready(&mut self, hooks: &[String]) -> io::Result<()>;
    fn event(&mut self, event: &Event) -> io::Result<()>;
    /// The kernel's lost-event counter moved by `new` (to `total`).
    fn lost(&mut self, new: u64, total: u64) -> io::Result<()>;
    fn summary(&mut self, summary: &Summary) -> io::Result<()>;
    /// The sockets that predate tracer are known (merged into the socket table).
    fn snapshot(&mut self, info: &SnapshotInfo) -> io::Result<()>;
    /// Ephemeral-port usage of a (netns, protocol, local address) crossed the warning level.
    fn ephemeral_warning(&mut self, usage: &Usage) -> io::Result<()>;
    /// Ephemeral-port usage at exit, for every address that used the range.
    fn ephemeral_report(&mut self, usage: &[Usage]) -> io::Result<()>;
    /// Connections grouped by remote endpoint (`--group-by remote`); `last` at exit.
    fn remote_groups(&mut self, groups: &[RemoteGroup], last: bool) -> io::Result<()>;
    /// A NAT binding, its end, or a stitched flow.
    fn nat(&mut self, item: &NatOutput) -> io::Result<()>;
    /// A watched network namespace went away: its NAT hooks were dropped.
    fn netns_gone(&mut self, name: &str, inode: u32) -> io::Result<()>;
    /// A listener's accept queue was full: the kernel refused connections since the last
    /// reading.
    fn listen_overflow(
        &mut self,
        overflow: &crate::model::listen::ListenOverflow,
    ) -> io::Result<()>;
    /// A userland proxy's two sockets carry one client's connection.
    fn proxied(&mut self, _proxied: &crate::model::proxy::Proxied) -> io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()>;
}
