//! Recording and replaying a run. [`Recording`] wraps a stage: it writes each input the
//! runner hands the stage (batches, conntrack events, ticks, the end) and every answer the
//! stage gets from the system to a capture, then passes them on. [`replay`] reads a capture
//! and gives a stage the same inputs and answers in the same order, without a kernel.
use tracer_common::{NatCounters, NatEvent, NatKey, SockEvent};

use super::{Flow, KernelInputs, NatInputs, Stage};
use crate::{
    error::Result,
    model::{
        evicted::Evicted,
        nat::{CtEvent, GoneNetns},
        snapshot::{SnapSocket, Snapshot},
    },
    source::capture::{Answer, CaptureReader, CaptureWriter, Frame, Header},
};

/// A stage whose inputs and answers are also written to a capture.
pub struct Recording<G> {
    pub stage: G,
    pub writer: CaptureWriter,
    /// The published ports last written (written again only when they change).
    pub last_published: Option<crate::model::mapping::PublishedPorts>,
}

/// The kernel inputs as the recorded stage sees them: every answer is written down.
struct Recorder<'a> {
    inner: &'a mut dyn KernelInputs,
    writer: &'a mut CaptureWriter,
    last_published: &'a mut Option<crate::model::mapping::PublishedPorts>,
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
    fn health_skipped(&mut self) -> u64 {
        let v = self.inner.health_skipped();
        self.note(v, |v| Answer::HealthSkipped(*v))
    }
    fn evicted(&mut self) -> Evicted {
        let v = self.inner.evicted();
        self.note(v, |v| Answer::Evicted(*v))
    }
    fn port_range(&mut self, netns: u32, pid: Option<u32>) -> Option<(u16, u16)> {
        let v = self.inner.port_range(netns, pid);
        self.note(v, |v| Answer::PortRange(netns, *v))
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
    fn judge_cgroup(&mut self, cgroup: u64, selected: bool, own_call: bool) {
        // Only a kernel-side shortcut: the recording holds what the agent read either way.
        self.inner.judge_cgroup(cgroup, selected, own_call);
    }
    fn listeners(&mut self, places: &[(u32, Option<u32>)]) -> (Vec<u32>, Vec<SnapSocket>) {
        let v = self.inner.listeners(places);
        self.note(v, |v| Answer::Listeners(v.0.clone(), v.1.clone()))
    }
    fn container(
        &mut self,
        cgroup: u64,
        pid: Option<u32>,
    ) -> Option<crate::model::container::Container> {
        let v = self.inner.container(cgroup, pid);
        self.note(v, |v| Answer::Container(cgroup, v.clone()))
    }
    fn published(&mut self) -> crate::model::mapping::PublishedPorts {
        let v = self.inner.published();
        if self.last_published.as_ref() == Some(&v) {
            return v;
        }
        *self.last_published = Some(v.clone());
        self.note(v, |v| Answer::Published(v.clone()))
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
    /// A stage error ends the run (a closed stdout, say): the capture still gets its end, so
    /// it replays up to there.
    fn end_on_error<T>(&mut self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.writer.frame(&Frame::Finish { undecodable: 0 });
            let _ = self.writer.finish();
        }
        result
    }

    fn with<T>(
        &mut self,
        kernel: &mut dyn KernelInputs,
        call: impl FnOnce(&mut G, &mut dyn KernelInputs) -> Result<T>,
    ) -> Result<T> {
        let mut recorder = Recorder {
            inner: kernel,
            writer: &mut self.writer,
            last_published: &mut self.last_published,
        };
        let result = call(&mut self.stage, &mut recorder);
        self.writer.check()?;
        result
    }
}

/// A stage's own inputs are not recorded: the only one recorded (`watch`) has questions
/// asked of it (`/nat/who`), which read its tables and change nothing a replay would show. They
/// reach the stage past the recorder, so their clock readings stay out of the capture.
impl<G: Stage> Stage for Recording<G> {
    type Extra = G::Extra;

    fn extra(&mut self, input: G::Extra, kernel: &mut dyn KernelInputs) -> Result<Flow> {
        self.stage.extra(input, kernel)
    }

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
        let result = self.with(kernel, |stage, k| stage.events(batch, nat, k));
        self.end_on_error(result)
    }

    fn conntrack(&mut self, event: CtEvent, kernel: &mut dyn KernelInputs) -> Result<()> {
        self.writer.frame(&Frame::Conntrack(event.clone()));
        self.with(kernel, |stage, k| stage.conntrack(event, k))
    }

    fn tick(&mut self, kernel: &mut dyn KernelInputs) -> Result<Flow> {
        self.writer.frame(&Frame::Tick);
        let result = self.with(kernel, |stage, k| stage.tick(k));
        self.end_on_error(result)
    }

    fn finish(&mut self, kernel: &mut dyn KernelInputs, undecodable: u64) -> Result<()> {
        self.writer.frame(&Frame::Finish { undecodable });
        self.with(kernel, |stage, k| stage.finish(k, undecodable))?;
        self.writer.finish()
    }
}

/// The system as a capture remembers it. The answers recorded during one input (a batch, a
/// tick, …) are queued before the stage sees that input; each question takes the first
/// queued answer of its kind. A replay that asks exactly what the live run asked (the same
/// output flags) gets exactly its answers; one that shows other events asks other questions,
/// and gets the last answer known for them (the port range a namespace had, the time of the
/// step).
#[derive(Default)]
struct Replayer {
    queue: std::collections::VecDeque<Answer>,
    /// The published ports as last recorded (recorded only when they changed).
    last_published: crate::model::mapping::PublishedPorts,
    /// The capture watched NAT, and learnt bindings from conntrack (no eBPF).
    nat: bool,
    nat_fallback: bool,
    last_now: u64,
    last_lost: u64,
    last_evicted: Evicted,
    ranges: std::collections::HashMap<u32, Option<(u16, u16)>>,
    last_nat_lost: u64,
    last_nat_evicted: u64,
    last_nat_totals: Option<[(u64, u64); 3]>,
}

impl Replayer {
    /// Queues one input's answers, learning the last value of each kind as it goes.
    fn queue(&mut self, answers: Vec<Answer>) {
        self.queue.clear();
        for a in &answers {
            match a {
                Answer::PortRange(netns, range) => {
                    self.ranges.insert(*netns, *range);
                }
                Answer::Evicted(e) => self.last_evicted = *e,
                _ => {}
            }
        }
        self.queue.extend(answers);
    }

    /// The first queued answer `pick` accepts.
    fn take<T>(&mut self, pick: impl Fn(&Answer) -> Option<T>) -> Option<T> {
        let at = self.queue.iter().position(|a| pick(a).is_some())?;
        self.queue.remove(at).and_then(|a| pick(&a))
    }
}

impl KernelInputs for Replayer {
    fn now_ns(&mut self) -> u64 {
        if let Some(v) = self.take(|a| match a {
            Answer::Now(v) => Some(*v),
            _ => None,
        }) {
            self.last_now = v;
        }
        self.last_now
    }
    fn lost(&mut self) -> u64 {
        if let Some(v) = self.take(|a| match a {
            Answer::Lost(v) => Some(*v),
            _ => None,
        }) {
            self.last_lost = v;
        }
        self.last_lost
    }
    fn health_skipped(&mut self) -> u64 {
        self.take(|a| match a {
            Answer::HealthSkipped(v) => Some(*v),
            _ => None,
        })
        .unwrap_or(0)
    }
    fn evicted(&mut self) -> Evicted {
        self.take(|a| match a {
            Answer::Evicted(v) => Some(*v),
            _ => None,
        })
        .unwrap_or(self.last_evicted)
    }
    fn port_range(&mut self, netns: u32, _pid: Option<u32>) -> Option<(u16, u16)> {
        let range = self.take(|a| match a {
            Answer::PortRange(ns, v) if *ns == netns => Some(*v),
            _ => None,
        });
        match range {
            Some(range) => {
                self.ranges.insert(netns, range);
                range
            }
            None => self.ranges.get(&netns).copied().flatten(),
        }
    }
    fn gone_namespaces(&mut self, _candidates: &[u32]) -> Vec<u32> {
        self.take(|a| match a {
            Answer::Gone(v) => Some(v.clone()),
            _ => None,
        })
        .unwrap_or_default()
    }
    fn sockets_now(&mut self) -> Option<Snapshot> {
        self.take(|a| match a {
            Answer::Sockets(v) => Some(v.clone()),
            _ => None,
        })
        .flatten()
    }
    fn any_alive(&mut self, _pids: &[u32]) -> bool {
        self.take(|a| match a {
            Answer::AnyAlive(v) => Some(*v),
            _ => None,
        })
        .unwrap_or(false)
    }
    fn listeners(&mut self, _places: &[(u32, Option<u32>)]) -> (Vec<u32>, Vec<SnapSocket>) {
        self.take(|a| match a {
            Answer::Listeners(read, v) => Some((read.clone(), v.clone())),
            _ => None,
        })
        .unwrap_or_default()
    }
    fn container(
        &mut self,
        cgroup: u64,
        _pid: Option<u32>,
    ) -> Option<crate::model::container::Container> {
        self.take(|a| match a {
            Answer::Container(c, v) if *c == cgroup => Some(v.clone()),
            _ => None,
        })
        .flatten()
    }
    fn published(&mut self) -> crate::model::mapping::PublishedPorts {
        if let Some(v) = self.take(|a| match a {
            Answer::Published(v) => Some(v.clone()),
            _ => None,
        }) {
            self.last_published = v;
        }
        self.last_published.clone()
    }
    fn nat(&mut self) -> Option<&mut dyn NatInputs> {
        if self.nat {
            Some(self)
        } else {
            None
        }
    }
}

impl NatInputs for Replayer {
    fn counters(&mut self, _key: &NatKey) -> Option<NatCounters> {
        self.take(|a| match a {
            Answer::NatCounters(v) => Some(v.clone()),
            _ => None,
        })
        .flatten()
        .and_then(|b| bytemuck::try_pod_read_unaligned(&b).ok())
    }
    fn forget(&mut self, _key: &NatKey) {}
    fn take_named(&mut self) -> Vec<(u32, String)> {
        self.take(|a| match a {
            Answer::NatNamed(v) => Some(v.clone()),
            _ => None,
        })
        .unwrap_or_default()
    }
    fn tick(&mut self) -> Vec<GoneNetns> {
        self.take(|a| match a {
            Answer::NatTick(v) => Some(v.clone()),
            _ => None,
        })
        .unwrap_or_default()
    }
    fn lost(&mut self) -> u64 {
        if let Some(v) = self.take(|a| match a {
            Answer::NatLost(v) => Some(*v),
            _ => None,
        }) {
            self.last_nat_lost = v;
        }
        self.last_nat_lost
    }
    fn evicted_seen(&mut self) -> u64 {
        if let Some(v) = self.take(|a| match a {
            Answer::NatEvictedSeen(v) => Some(*v),
            _ => None,
        }) {
            self.last_nat_evicted = v;
        }
        self.last_nat_evicted
    }
    fn kernel_totals(&mut self) -> Option<[(u64, u64); 3]> {
        if let Some(v) = self.take(|a| match a {
            Answer::NatTotals(v) => Some(*v),
            _ => None,
        }) {
            self.last_nat_totals = v;
        }
        self.last_nat_totals
    }
    fn fallback(&mut self) -> bool {
        self.nat_fallback
    }
}

/// Answers one input may carry, at most: a batch asks a few per event (4,096 events), a
/// tick a few per namespace.
const MAX_ANSWERS: usize = 1 << 16;

/// Reads the answers that follow an input, and the next input.
fn answers_then_input(reader: &mut CaptureReader) -> Result<(Vec<Answer>, Option<Frame>)> {
    let mut answers = Vec::new();
    loop {
        match reader.next_frame()? {
            Some(Frame::Answer(_)) if answers.len() >= MAX_ANSWERS => {
                return Err(reader.damaged("one input has more answers than any run asks"));
            }
            Some(Frame::Answer(a)) => answers.push(a),
            Some(Frame::Header(_)) => return Err(reader.damaged("a second header")),
            other => return Ok((answers, other)),
        }
    }
}

/// Runs `stage` on a capture's inputs (after its header), to its end.
pub fn replay<G: Stage>(reader: &mut CaptureReader, header: &Header, stage: &mut G) -> Result<()> {
    let mut system = Replayer {
        nat: header.nat,
        nat_fallback: header.nat_fallback,
        ..Default::default()
    };
    // The answers `start` got come before the first input.
    let (answers, mut input) = answers_then_input(reader)?;
    system.queue(answers);
    stage.start(&mut system)?;
    loop {
        let Some(frame) = input.take() else {
            // Cut short (the recording tracer was killed): replay what is there.
            eprintln!("tracer: the capture ends before its run did (the recording was cut short); replayed up to there");
            return stage.finish(&mut system, 0);
        };
        let (answers, next) = answers_then_input(reader)?;
        system.queue(answers);
        input = next;
        match frame {
            Frame::Batch(mut socks, mut nats) => {
                stage.events(&mut socks, &mut nats, &mut system)?
            }
            Frame::Conntrack(ev) => stage.conntrack(ev, &mut system)?,
            Frame::Tick => {
                stage.tick(&mut system)?;
            }
            Frame::Finish { undecodable } => return stage.finish(&mut system, undecodable),
            Frame::Header(_) | Frame::Answer(_) => {
                return Err(reader.damaged("a frame is out of place"));
            }
        }
    }
}
