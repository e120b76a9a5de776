//! The correlator: the socket table (sockets keyed by kernel identity, with their owners),
//! port classification, filters, and the enriched events the sinks print. Pure: no I/O.
pub mod bounded;
pub mod container;
pub mod ephemeral;
pub mod event;
pub mod evicted;
pub mod filter;
pub mod health;
pub mod listen;
pub mod mapping;
pub mod nat;
pub mod ports;
pub mod proxy;
pub mod snapshot;
pub mod story;
pub mod table;
pub mod types;

pub use event::{Clock, Event};
pub use filter::Filter;
pub use table::{Owner, SocketTable};
