//! Recording and replaying a run. [`Recording`] wraps a stage: it writes each input the
//! runner hands the stage (batches, conntrack events, ticks, the end) and every answer the
//! stage gets from the system to a capture, then passes them on. [`replay`] reads a capture
//! and gives a stage the same inputs and answers in the same order, without a kernel.
use tracer_common::{NatCounters, NatEvent, NatKey, SockEvent};

use super::{Flow, KernelInputs, NatInputs, Stage};
use crate::{
    error::{Error, Result},
    model::{
        evicted::Evicted,
        nat::{CtEvent, GoneNetns},
        snapshot::Snapshot,
    },
    source::capture::{Answer, CaptureReader, CaptureWriter, Frame, Header},
};

/// A stage whose inputs and answers are also written to a capture.
pub struct Recording<G> {
    pub stage: G,
    pub writer: CaptureWriter,
}

/// The kernel inputs as the recorded stage sees them: every answer is written down.
struct Recorder<'a> {
    inner: &'a mut dyn KernelInputs,
    writer: &'a mut CaptureWriter,
}

impl Recorder<'_> {
    fn note<T>(&mut self, value: T, answer: impl FnOnce(&T) -> Answer) -> T {
        self.writer.frame(&Frame::Answer(answer(&value)));
        value
    }

    fn nat_inner(&mut self) -> &mut dyn NatInputs {
        // Only reached through `nat()`, which checked that the inner kernel has a NAT side.
        self.inner.nat().expect("a NAT side")
    }
}

impl KernelInputs for Recorder<'_> {
    fn now_ns(&mut self) -> u64 {
        let v = self.inner.now_ns();
        self.note(v, |v| Answer::Now(*v))
    }
    fn lost(&mut self) -> u64 {
        let v = self.inner.lost();
        self.note(v, |v| Answer::Lost(*v))
    }
    fn evicted(&mut self) -> Evicted {
        let v = self.inner.evicted();
        self.note(v, |v| Answer::Evicted(*v))
    }
    fn port_range(&mut self, netns: u32, pid: Option<u32>) -> Option<(u16, u16)> {
        let v = self.inner.port_range(netns, pid);
        self.note(v, |v| Answer::PortRange(*v))
    }
    fn gone_namespaces(&mut self, candidates: &[u32]) -> Vec<u32> {
        let v = self.inner.gone_namespaces(candidates);
        self.note(v, |v| Answer::Gone(v.clone()))
    }
    fn sockets_now(&mut self) -> Option<Snapshot> {
        let v = self.inner.sockets_now();
        self.note(v, |v| Answer::Sockets(v.clone()))
    }
    fn any_alive(&mut self, pids: &[u32]) -> bool {
        let v = self.inner.any_alive(pids);
        self.note(v, |v| Answer::AnyAlive(*v))
    }
    fn nat(&mut self) -> Option<&mut dyn NatInputs> {
        match self.inner.nat() {
            Some(_) => Some(self),
            None => None,
        }
    }
}

impl NatInputs for Recorder<'_> {
    fn counters(&mut self, key: &NatKey) -> Option<NatCounters> {
        let v = self.nat_inner().counters(key);
        self.note(v, |v| {
            Answer::NatCounters(v.map(|c| bytemuck::bytes_of(&c).to_vec()))
        })
    }
    fn forget(&mut self, key: &NatKey) {
        self.nat_inner().forget(key)
    }
    fn take_named(&mut self) -> Vec<(u32, String)> {
        let v = self.nat_inner().take_named();
        self.note(v, |v| Answer::NatNamed(v.clone()))
    }
    fn tick(&mut self) -> Vec<GoneNetns> {
        let v = self.nat_inner().tick();
        self.note(v, |v| Answer::NatTick(v.clone()))
    }
    fn lost(&mut self) -> u64 {
        let v = self.nat_inner().lost();
        self.note(v, |v| Answer::NatLost(*v))
    }
    fn evicted_seen(&mut self) -> u64 {
        let v = self.nat_inner().evicted_seen();
        self.note(v, |v| Answer::NatEvictedSeen(*v))
    }
    fn kernel_totals(&mut self) -> Option<[(u64, u64); 3]> {
        let v = self.nat_inner().kernel_totals();
        self.note(v, |v| Answer::NatTotals(*v))
    }
    fn fallback(&mut self) -> bool {
        // A constant of the run: in the capture's header, not an answer.
        self.nat_inner().fallback()
    }
}

impl<G: Stage> Recording<G> {
    fn with<T>(
        &mut self,
        kernel: &mut dyn KernelInputs,
        call: impl FnOnce(&mut G, &mut dyn KernelInputs) -> Result<T>,
    ) -> Result<T> {
        let mut recorder = Recorder {
            inner: kernel,
            writer: &mut self.writer,
        };
        let result = call(&mut self.stage, &mut recorder);
        self.writer.check()?;
        result
    }
}

impl<G: Stage> Stage for Recording<G> {
    type Extra = G::Extra;

    fn start(&mut self, kernel: &mut dyn KernelInputs) -> Result<()> {
        self.with(kernel, |stage, k| stage.start(k))
    }

    fn events(
        &mut self,
        batch: &mut Vec<SockEvent>,
        nat: &mut Vec<NatEvent>,
        kernel: &mut dyn KernelInputs,
    ) -> Result<()> {
        self.writer.frame(&Frame::Batch(batch.clone(), nat.clone()));
        self.with(kernel, |stage, k| stage.events(batch, nat, k))
    }

    fn conntrack(&mut self, event: CtEvent, kernel: &mut dyn KernelInputs) -> Result<()> {
        self.writer.frame(&Frame::Conntrack(event.clone()));
        self.with(kernel, |stage, k| stage.conntrack(event, k))
    }

    fn tick(&mut self, kernel: &mut dyn KernelInputs) -> Result<Flow> {
        self.writer.frame(&Frame::Tick);
        self.with(kernel, |stage, k| stage.tick(k))
    }

    fn finish(&mut self, kernel: &mut dyn KernelInputs, undecodable: u64) -> Result<()> {
        self.writer.frame(&Frame::Finish { undecodable });
        self.with(kernel, |stage, k| stage.finish(k, undecodable))?;
        self.writer.finish()
    }
}

/// The system as a capture remembers it: each question gets the next recorded answer.
struct Replayer<'a> {
    reader: &'a mut CaptureReader,
    /// The capture watched NAT, and learnt bindings from conntrack (no eBPF).
    nat: bool,
    nat_fallback: bool,
    /// The first way the capture failed to answer (reported once the stage returns).
    error: Option<Error>,
}

impl Replayer<'_> {
    /// The next frame, which must be an answer of the kind `pick` accepts.
    fn answer<T: Default>(&mut self, what: &str, pick: impl FnOnce(Answer) -> Option<T>) -> T {
        if self.error.is_some() {
            return T::default();
        }
        let frame = self.reader.next_frame();
        let found = match frame {
            Ok(Some(Frame::Answer(a))) => pick(a),
            Ok(_) | Err(_) => None,
        };
        found.unwrap_or_else(|| {
            self.error = Some(self.reader.damaged(&format!(
                "the run asked for {what} here and the capture has something else (recorded by another tracer version?)"
            )));
            T::default()
        })
    }
}

impl KernelInputs for Replayer<'_> {
    fn now_ns(&mut self) -> u64 {
        self.answer("the time", |a| match a {
            Answer::Now(v) => Some(v),
            _ => None,
        })
    }
    fn lost(&mut self) -> u64 {
        self.answer("the loss counter", |a| match a {
            Answer::Lost(v) => Some(v),
            _ => None,
        })
    }
    fn evicted(&mut self) -> Evicted {
        self.answer("eviction counts", |a| match a {
            Answer::Evicted(v) => Some(v),
            _ => None,
        })
    }
    fn port_range(&mut self, _netns: u32, _pid: Option<u32>) -> Option<(u16, u16)> {
        self.answer("a port range", |a| match a {
            Answer::PortRange(v) => Some(v),
            _ => None,
        })
    }
    fn gone_namespaces(&mut self, _candidates: &[u32]) -> Vec<u32> {
        self.answer("gone namespaces", |a| match a {
            Answer::Gone(v) => Some(v),
            _ => None,
        })
    }
    fn sockets_now(&mut self) -> Option<Snapshot> {
        self.answer("a socket list", |a| match a {
            Answer::Sockets(v) => Some(v),
            _ => None,
        })
    }
    fn any_alive(&mut self, _pids: &[u32]) -> bool {
        self.answer("whether processes live", |a| match a {
            Answer::AnyAlive(v) => Some(v),
            _ => None,
        })
    }
    fn nat(&mut self) -> Option<&mut dyn NatInputs> {
        if self.nat {
            Some(self)
        } else {
            None
        }
    }
}

impl NatInputs for Replayer<'_> {
    fn counters(&mut self, _key: &NatKey) -> Option<NatCounters> {
        let bytes = self.answer("NAT counters", |a| match a {
            Answer::NatCounters(v) => Some(v),
            _ => None,
        });
        bytes.and_then(|b| bytemuck::try_pod_read_unaligned(&b).ok())
    }
    fn forget(&mut self, _key: &NatKey) {}
    fn take_named(&mut self) -> Vec<(u32, String)> {
        self.answer("namespace names", |a| match a {
            Answer::NatNamed(v) => Some(v),
            _ => None,
        })
    }
    fn tick(&mut self) -> Vec<GoneNetns> {
        self.answer("NAT namespaces gone", |a| match a {
            Answer::NatTick(v) => Some(v),
            _ => None,
        })
    }
    fn lost(&mut self) -> u64 {
        self.answer("the NAT loss counter", |a| match a {
            Answer::NatLost(v) => Some(v),
            _ => None,
        })
    }
    fn evicted_seen(&mut self) -> u64 {
        self.answer("NAT evictions", |a| match a {
            Answer::NatEvictedSeen(v) => Some(v),
            _ => None,
        })
    }
    fn kernel_totals(&mut self) -> Option<[(u64, u64); 3]> {
        self.answer("NAT totals", |a| match a {
            Answer::NatTotals(v) => Some(v),
            _ => None,
        })
    }
    fn fallback(&mut self) -> bool {
        self.nat_fallback
    }
}

/// Runs `stage` on a capture's inputs (after its header), to its end.
pub fn replay<G: Stage>(reader: &mut CaptureReader, header: &Header, stage: &mut G) -> Result<()> {
    let mut replayer = Replayer {
        reader,
        nat: header.nat,
        nat_fallback: header.nat_fallback,
        error: None,
    };
    let step = |replayer: &mut Replayer<'_>,
                call: &mut dyn FnMut(&mut dyn KernelInputs) -> Result<()>| {
        let result = call(replayer);
        match replayer.error.take() {
            Some(e) => Err(e),
            None => result,
        }
    };
    step(&mut replayer, &mut |k| stage.start(k))?;
    loop {
        let frame = replayer.reader.next_frame()?;
        match frame {
            Some(Frame::Batch(mut socks, mut nats)) => step(&mut replayer, &mut |k| {
                stage.events(&mut socks, &mut nats, k)
            })?,
            Some(Frame::Conntrack(ev)) => {
                let mut ev = Some(ev);
                step(&mut replayer, &mut |k| match ev.take() {
                    Some(ev) => stage.conntrack(ev, k),
                    None => Ok(()),
                })?
            }
            Some(Frame::Tick) => step(&mut replayer, &mut |k| stage.tick(k).map(|_| ()))?,
            Some(Frame::Finish { undecodable }) => {
                return step(&mut replayer, &mut |k| stage.finish(k, undecodable));
            }
            Some(Frame::Header(_)) | Some(Frame::Answer(_)) => {
                return Err(replayer.reader.damaged("a frame is out of place"));
            }
            None => return Err(replayer.reader.damaged("it ends before the run did")),
        }
    }
}
