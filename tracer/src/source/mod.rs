//! Turns the ring buffer into a stream of decoded events.
//!
//! The correlator and the sinks only see [`EventSource`], so they are tested with recorded or
//! synthetic events, without root.
use std::future::Future;

use aya::maps::{MapData, RingBuf};
use tokio::io::{unix::AsyncFd, Interest};
use tracer_common::{kind, nat, NatEvent, SockEvent, NAT_EVENT_SIZE, SOCK_EVENT_SIZE};

use crate::error::{Error, Result};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than a socket event")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u16),
}

/// One ring-buffer record.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    Sock(SockEvent),
    Nat(NatEvent),
}

/// Decodes one ring-buffer record of either kind (socket event or NAT binding).
pub fn decode_record(bytes: &[u8]) -> Result<Record, DecodeError> {
    if bytes.len() >= 2 && u16::from_ne_bytes([bytes[0], bytes[1]]) == nat::KIND_BINDING {
        if bytes.len() < NAT_EVENT_SIZE {
            return Err(DecodeError::Short(bytes.len()));
        }
        return Ok(Record::Nat(bytemuck::pod_read_unaligned(
            &bytes[..NAT_EVENT_SIZE],
        )));
    }
    decode(bytes).map(Record::Sock)
}

/// Decodes one socket-event record.
pub fn decode(bytes: &[u8]) -> Result<SockEvent, DecodeError> {
    if bytes.len() < SOCK_EVENT_SIZE {
        return Err(DecodeError::Short(bytes.len()));
    }
    let event: SockEvent = bytemuck::pod_read_unaligned(&bytes[..SOCK_EVENT_SIZE]);
    if event.kind == 0 || event.kind >= kind::COUNT {
        return Err(DecodeError::UnknownKind(event.kind));
    }
    Ok(event)
}

pub mod capture;

pub trait EventSource {
    /// Waits for events and appends every one available to `out` (at least one, unless the
    /// source is exhausted, in which case it returns Ok(false)).
    fn next_batch(&mut self, out: &mut Vec<SockEvent>) -> impl Future<Output = Result<bool>>;
    /// Appends what is available right now without waiting, up to [`MAX_BATCH`] events (call
    /// until it returns 0 to empty the source; used when stopping, so events already in the
    /// ring are not dropped). Returns how many were added.
    fn drain_now(&mut self, out: &mut Vec<SockEvent>) -> usize;
    /// Records that could not be decoded so far.
    fn undecodable(&self) -> u64 {
        0
    }
    /// Moves the NAT binding records read so far (they share the ring) to `out`.
    fn take_nat(&mut self, _out: &mut Vec<NatEvent>) {}
}

/// Events handed over per call, at most.
pub const MAX_BATCH: usize = 4096;

/// The live source: the kernel's ring buffer, woken by epoll through tokio.
pub struct RingBufSource {
    ring: AsyncFd<RingBuf<MapData>>,
    undecodable: u64,
    nat: Vec<NatEvent>,
}

impl RingBufSource {
    pub fn new(ring: RingBuf<MapData>) -> Result<Self> {
        // SAFETY: the RingBuf owns its fd and lives inside the AsyncFd, so the fd stays open
        // and is not reused for as long as it is registered.
        let ring =
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| {
                Error::io(
                    "polling the ring buffer",
                    std::io::Error::other(e.to_string()),
                )
            })?;
        Ok(RingBufSource {
            ring,
            undecodable: 0,
            nat: Vec::new(),
        })
    }
}

impl RingBufSource {
    fn read_available(
        ring: &mut RingBuf<MapData>,
        undecodable: &mut u64,
        out: &mut Vec<SockEvent>,
        nat: &mut Vec<NatEvent>,
    ) -> usize {
        let before = out.len() + nat.len();
        // At most a batch at a time: the rest stays in the ring for the next call, so the
        // batch buffer never grows to the ring's size.
        while out.len() + nat.len() - before < MAX_BATCH {
            let Some(item) = ring.next() else { break };
            match decode_record(&item) {
                Ok(Record::Sock(event)) => out.push(event),
                Ok(Record::Nat(binding)) => nat.push(binding),
                Err(_) => *undecodable += 1,
            }
        }
        out.len() + nat.len() - before
    }
}

impl EventSource for RingBufSource {
    async fn next_batch(&mut self, out: &mut Vec<SockEvent>) -> Result<bool> {
        loop {
            let mut guard = self
                .ring
                .readable_mut()
                .await
                .map_err(|e| Error::io("polling the ring buffer", e))?;
            let added = Self::read_available(
                guard.get_inner_mut(),
                &mut self.undecodable,
                out,
                &mut self.nat,
            );
            // Readiness is edge-triggered: clear it only once the ring is empty, or what is
            // left would wait for the next wake-up.
            if added < MAX_BATCH {
                guard.clear_ready();
            }
            if added > 0 {
                return Ok(true);
            }
        }
    }

    fn drain_now(&mut self, out: &mut Vec<SockEvent>) -> usize {
        Self::read_available(
            self.ring.get_mut(),
            &mut self.undecodable,
            out,
            &mut self.nat,
        )
    }

    fn undecodable(&self) -> u64 {
        self.undecodable
    }

    fn take_nat(&mut self, out: &mut Vec<NatEvent>) {
        out.append(&mut self.nat);
    }
}

/// A source that may be missing: without one, no events ever come (`nat --no-flows` on a
/// kernel whose NAT records have no ring).
impl<S: EventSource> EventSource for Option<S> {
    async fn next_batch(&mut self, out: &mut Vec<SockEvent>) -> Result<bool> {
        match self {
            Some(source) => source.next_batch(out).await,
            None => std::future::pending().await,
        }
    }

    fn drain_now(&mut self, out: &mut Vec<SockEvent>) -> usize {
        self.as_mut().map_or(0, |s| s.drain_now(out))
    }

    fn undecodable(&self) -> u64 {
        self.as_ref().map_or(0, S::undecodable)
    }

    fn take_nat(&mut self, out: &mut Vec<NatEvent>) {
        if let Some(source) = self {
            source.take_nat(out);
        }
    }
}

/// A fixed list of events, for tests and replays.
pub struct VecSource {
    events: std::vec::IntoIter<SockEvent>,
}

impl VecSource {
    pub fn new(events: Vec<SockEvent>) -> Self {
        VecSource {
            events: events.into_iter(),
        }
    }
}

impl EventSource for VecSource {
    async fn next_batch(&mut self, out: &mut Vec<SockEvent>) -> Result<bool> {
        Ok(self.drain_now(out) > 0)
    }

    fn drain_now(&mut self, out: &mut Vec<SockEvent>) -> usize {
        let before = out.len();
        out.extend(self.events.by_ref());
        out.len() - before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_record() {
        let ev = SockEvent {
            kind: kind::BIND,
            lport: 8080,
            pid: 42,
            ..Default::default()
        };
        let bytes = bytemuck::bytes_of(&ev);
        assert_eq!(decode(bytes), Ok(ev));
        // Ring-buffer records are 8-byte aligned and may be longer than the struct.
        let mut longer = bytes.to_vec();
        longer.extend_from_slice(&[0; 8]);
        assert_eq!(decode(&longer), Ok(ev));
        assert_eq!(decode(&bytes[..100]), Err(DecodeError::Short(100)));
    }

    #[test]
    fn rejects_short_and_unknown() {
        assert_eq!(decode(&[0; 10]), Err(DecodeError::Short(10)));
        let ev = SockEvent {
            kind: 999,
            ..Default::default()
        };
        assert_eq!(
            decode(bytemuck::bytes_of(&ev)),
            Err(DecodeError::UnknownKind(999))
        );
    }
}
