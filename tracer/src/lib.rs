//! tracer: a live eBPF tracer of sockets, ports and the TCP state machine.
//!
//! The data path is one-way: kernel hooks (`tracer-ebpf`) → ring buffer → [`source`] (decode)
//! → [`model`] (socket table, attribution, enrichment) → [`output`] (table, JSON lines).
pub mod cli;
pub mod commands;
pub mod error;
pub mod i18n;
pub mod kernel;
pub mod metrics;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod source;
pub mod text;

/// Every sink at once, fed hostile names (a test across output and metrics).
#[cfg(test)]
mod sink_tests;
