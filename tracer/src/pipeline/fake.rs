//! Fakes of the pipeline's inputs, for running any stage without root or a kernel: in the
//! crate's own tests, in `tracer/tests/`, and anywhere a lesson wants a scripted run.
use std::{
    cell::RefCell,
    io::{self, Write},
    rc::Rc,
};

use tracer_common::{NatCounters, NatKey};

use super::{KernelInputs, NatInputs};
use crate::model::{evicted::Evicted, nat::GoneNetns, snapshot::Snapshot};

/// A kernel that answers from its fields: time moves by `step_ns` per question, every
/// namespace has `range`, nothing is lost, evicted or gone unless set.
#[derive(Default)]
pub struct FakeKernel {
    pub now_ns: u64,
    pub step_ns: u64,
    pub lost: u64,
    pub evicted: Evicted,
    pub range: Option<(u16, u16)>,
    pub gone: Vec<u32>,
    pub alive: bool,
    pub nat: Option<FakeNat>,
}

impl FakeKernel {
    /// Time starting at `now_ns`, a millisecond per question, Linux's default range.
    pub fn at(now_ns: u64) -> Self {
        FakeKernel {
            now_ns,
            step_ns: 1_000_000,
            range: Some((32768, 60999)),
            ..Default::default()
        }
    }
}

impl KernelInputs for FakeKernel {
    fn now_ns(&mut self) -> u64 {
        self.now_ns += self.step_ns;
        self.now_ns
    }
    fn lost(&mut self) -> u64 {
        self.lost
    }
    fn evicted(&mut self) -> Evicted {
        self.evicted
    }
    fn port_range(&mut self, _netns: u32, _pid: Option<u32>) -> Option<(u16, u16)> {
        self.range
    }
    fn gone_namespaces(&mut self, candidates: &[u32]) -> Vec<u32> {
        candidates
            .iter()
            .copied()
            .filter(|c| self.gone.contains(c))
            .collect()
    }
    fn sockets_now(&mut self) -> Option<Snapshot> {
        None
    }
    fn any_alive(&mut self, _pids: &[u32]) -> bool {
        self.alive
    }
    fn nat(&mut self) -> Option<&mut dyn NatInputs> {
        self.nat.as_mut().map(|n| n as &mut dyn NatInputs)
    }
}

/// A NAT side with named namespaces and fixed per-binding counters.
#[derive(Default)]
pub struct FakeNat {
    /// (inode, name) handed out at the first look.
    pub named: Vec<(u32, String)>,
    /// What every binding counted.
    pub counters: Option<NatCounters>,
    /// Namespaces reported gone at the next tick.
    pub gone: Vec<GoneNetns>,
    pub fallback: bool,
}

impl NatInputs for FakeNat {
    fn counters(&mut self, _key: &NatKey) -> Option<NatCounters> {
        self.counters
    }
    fn forget(&mut self, _key: &NatKey) {}
    fn take_named(&mut self) -> Vec<(u32, String)> {
        std::mem::take(&mut self.named)
    }
    fn tick(&mut self) -> Vec<GoneNetns> {
        std::mem::take(&mut self.gone)
    }
    fn lost(&mut self) -> u64 {
        0
    }
    fn evicted_seen(&mut self) -> u64 {
        0
    }
    fn kernel_totals(&mut self) -> Option<[(u64, u64); 3]> {
        self.counters.map(|c| {
            [
                (
                    c.orig_packets + c.reply_packets,
                    c.orig_bytes + c.reply_bytes,
                ),
                (0, 0),
                (0, 0),
            ]
        })
    }
    fn fallback(&mut self) -> bool {
        self.fallback
    }
}

/// A writer whose bytes stay readable after the sink that owns it is gone.
#[derive(Clone, Default)]
pub struct SharedBuf(Rc<RefCell<Vec<u8>>>);

impl SharedBuf {
    /// What was written, as text (lossy: tests compare it).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.borrow()).into_owned()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
