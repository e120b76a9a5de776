//! How the model's types are spelled in JSON: each by its one name (`"tcp"`, `"ipv6"`,
//! `"SYN_SENT"`, `"connect"`), the values the JSON records have always carried; a story's
//! step with its `--explain` sentence; the `type` tag each record starts with.
use serde::{ser::SerializeStruct, Serialize, Serializer};

use super::story_steps::{error_text, listening_text, step_text};
use crate::model::nat::{NatKind, NatSource};
use crate::model::story::{CallError, Listening, Role, Side, Step};
use crate::model::types::{Endpoint, EventKind, Family, Proto, SockState, TcpState};

macro_rules! by_name {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
    )*};
}

by_name!(EventKind, Family, Proto, SockState, TcpState);

impl Serialize for NatKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Serialize for NatSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            NatSource::Ebpf => "ebpf",
            NatSource::Conntrack => "conntrack",
        })
    }
}

/// A story's role: `listener`, `accepted`, `client`, `udp`, `unused`.
impl Serialize for Role {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            Role::Listener => "listener",
            Role::Accepted => "accepted",
            Role::Client => "client",
            Role::Udp => "udp",
            Role::Unused => "unused",
        })
    }
}

impl Serialize for Side {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(super::story::side_name(*self))
    }
}

/// Spelled as text: `127.0.0.1:8080` (a UDP story's peers).
impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `connect: ECONNREFUSED`.
impl Serialize for CallError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&error_text(self))
    }
}

/// `tcp 0.0.0.0:8080 (http-alt, registered)`.
impl Serialize for Listening {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&listening_text(self))
    }
}

/// A story's step: its tag, its text and the `--explain` sentence that goes with it.
impl Serialize for Step {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = s.serialize_struct("Step", 5)?;
        out.serialize_field("ts_ns", &self.ts_ns)?;
        out.serialize_field("since_previous_ns", &self.since_previous_ns)?;
        out.serialize_field("what", self.what.name())?;
        out.serialize_field("text", &step_text(self))?;
        out.serialize_field("explain", super::story::explain(self.what, self.role))?;
        out.end()
    }
}

/// A model record with its JSON `type` tag: `{"type":"nat_binding",…the record's fields}`.
/// serde_json writes a flattened struct through its map serializer, to the same bytes.
#[derive(Serialize)]
pub struct Tagged<'a, T: Serialize> {
    #[serde(rename = "type")]
    pub record: &'static str,
    #[serde(flatten)]
    pub inner: &'a T,
}

impl<'a, T: Serialize> Tagged<'a, T> {
    pub fn new(record: &'static str, inner: &'a T) -> Self {
        Tagged { record, inner }
    }
}
