//! How the model's types are spelled in JSON: each by its one name (`"tcp"`, `"ipv6"`,
//! `"SYN_SENT"`, `"connect"`), the values the JSON records have always carried; a story's
//! step with its `--explain` sentence; the `type` tag each record starts with.
use serde::{ser::SerializeStruct, Serialize, Serializer};

use super::story_steps::{error_text, listening_text, step_text};
use crate::model::nat::{NatKind, NatSource};
use crate::model::story::{CallError, Listening, Role, Side, Step, StepDetail};
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

/// A story's step: its tag, its values (`detail`), its text and the `--explain` sentence that
/// goes with it.
impl Serialize for Step {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = s.serialize_struct("Step", 6)?;
        out.serialize_field("ts_ns", &self.ts_ns)?;
        out.serialize_field("since_previous_ns", &self.since_previous_ns)?;
        out.serialize_field("what", self.what.name())?;
        out.serialize_field("detail", &detail(&self.detail))?;
        out.serialize_field("text", &step_text(self))?;
        out.serialize_field("explain", super::story::explain(self.what, self.role))?;
        out.end()
    }
}

/// A step's values as fields (`fd`, `local`, `remote`, `peer`, `port`, `kernel_chose`,
/// `old_state`/`new_state`, `backlog`, `errno` …): what the text says, for a program to read.
fn detail(d: &StepDetail) -> serde_json::Value {
    use serde_json::json;
    match d {
        StepDetail::Socket { fd, proto, family } => {
            json!({"fd": fd, "proto": proto, "family": family})
        }
        StepDetail::Bind { local, service } => {
            json!({"local": local, "port": local.port, "kernel_chose": false, "service": service})
        }
        StepDetail::BindChosen {
            addr,
            port,
            service,
        } => {
            json!({"local": Endpoint::new(*addr, *port), "port": port, "kernel_chose": true, "service": service})
        }
        StepDetail::Listen { backlog } => json!({ "backlog": backlog }),
        StepDetail::Accept {
            fd,
            peer,
            peer_ephemeral,
            socket,
        } => {
            json!({"fd": fd, "peer": peer, "peer_ephemeral": peer_ephemeral, "socket": socket})
        }
        StepDetail::Accepted {
            fd,
            peer,
            waited_ns,
            ..
        } => json!({"fd": fd, "peer": peer, "waited_ns": waited_ns}),
        StepDetail::Connect {
            remote,
            service,
            local,
            kernel_chose,
        } => {
            json!({"remote": remote, "service": service, "local": local, "port": local.port, "kernel_chose": kernel_chose})
        }
        StepDetail::Transition { old, new } => json!({"old_state": old, "new_state": new}),
        StepDetail::Autobind { call, remote, port } => {
            json!({"call": call, "remote": remote, "port": port, "kernel_chose": true})
        }
        StepDetail::Shutdown { how } => json!({ "how": how }),
        StepDetail::Close { fd } => json!({ "fd": fd }),
        StepDetail::Release => json!({}),
        StepDetail::Failed { call, end, errno } => {
            json!({"call": call, "end": end, "errno": errno})
        }
        StepDetail::Snapshot {
            proto,
            local,
            state,
            remote,
        } => json!({"proto": proto, "local": local, "state": state, "remote": remote}),
        StepDetail::Retransmit {
            what,
            count,
            waited_ns,
        } => json!({"segment": what, "count": count, "waited_ns": waited_ns}),
        StepDetail::Reset {
            direction,
            state,
            reason,
        } => json!({"direction": direction, "state": state, "reason": reason}),
        StepDetail::Drop { reason } => json!({ "reason": reason }),
        StepDetail::Proxy {
            front,
            client,
            published,
            target,
            container,
            other,
        } => {
            json!({"front": front, "client": client, "published": published, "target": target, "container": container, "other": other})
        }
        StepDetail::Data { udp, data, peers } => json!({
            "udp": udp,
            "sent_bytes": data.sent_bytes,
            "received_bytes": data.received_bytes,
            "sends": data.sends,
            "receives": data.receives,
            "peers": peers,
        }),
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
