//! The one runner every live command uses: inputs (one struct, real or fake) → a [`Stage`]
//! (what the command does with them: the model and its sinks) until a stop.
//!
//! ```text
//! Inputs { events, kernel, conntrack, extra, clock, stop }
//!        │
//!        ▼  run(): drain the ring on a short timer or when the kernel wakes us,
//!   Stage::start / events / conntrack / extra / tick / finish   (model → sinks)
//! ```
//!
//! Everything a stage learns from the system comes through [`KernelInputs`] or [`NatInputs`],
//! so a stage runs the same on the live kernel, on a recorded capture
//! ([`crate::source::capture`]), and on synthetic inputs in `cargo test` without root.
pub mod fake;
pub mod inputs;
pub mod nat;
pub mod ports_live;
pub mod record;
pub mod trace;
pub mod watch;

use std::time::Duration;

use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracer_common::{NatEvent, SockEvent};

pub use inputs::{KernelInputs, NatInputs};

use crate::{
    error::{Error, Result},
    model::{nat::CtEvent, Clock},
    source::EventSource,
};

/// How often the runner wakes up on its own.
#[derive(Clone, Copy, Debug)]
pub struct Cadence {
    /// Drain the ring this often (the kernel wakes us between drains only when a quarter of
    /// the ring is full: one wake-up per thousands of events). None: only on wake-ups.
    pub poll: Option<Duration>,
    /// Call [`Stage::tick`] this often.
    pub tick: Duration,
}

/// When the run ends, besides its inputs running out.
#[derive(Default)]
pub struct Stop {
    /// SIGINT and SIGTERM end it.
    pub signals: bool,
    /// `--duration`.
    pub after: Option<Duration>,
}

/// Everything a run reads from outside, in one place.
pub struct Inputs<S, X = ()> {
    /// Socket events and NAT binding records (the ring buffer, a capture, or a list).
    pub events: S,
    /// Loss counters, the kernel's bounded maps, namespaces' port ranges, fresh snapshots.
    pub kernel: Box<dyn KernelInputs>,
    /// Conntrack events (NAT binding ends; new bindings on the conntrack fallback).
    pub conntrack: Option<mpsc::UnboundedReceiver<CtEvent>>,
    /// The command's own inputs (keys for the live view, the traced child's exit, …).
    pub extra: Option<mpsc::UnboundedReceiver<X>>,
    /// Kernel time → wall-clock time.
    pub clock: Clock,
    pub stop: Stop,
}

/// What a stage tells the runner after an input of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// What a command does with its inputs. Each call gets the kernel inputs to ask.
pub trait Stage {
    /// The command's own input type ([`Inputs::extra`]).
    type Extra;
    /// Once, before the first event.
    fn start(&mut self, _kernel: &mut dyn KernelInputs) -> Result<()> {
        Ok(())
    }
    /// A batch of socket events and the NAT binding records read with it (both drained).
    fn events(
        &mut self,
        batch: &mut Vec<SockEvent>,
        nat: &mut Vec<NatEvent>,
        kernel: &mut dyn KernelInputs,
    ) -> Result<()>;
    /// One conntrack event.
    fn conntrack(&mut self, _event: CtEvent, _kernel: &mut dyn KernelInputs) -> Result<()> {
        Ok(())
    }
    /// One input of the command's own.
    fn extra(&mut self, _input: Self::Extra, _kernel: &mut dyn KernelInputs) -> Result<Flow> {
        Ok(Flow::Continue)
    }
    /// The command's own inputs ended (their sender is gone).
    fn extra_ended(&mut self, _kernel: &mut dyn KernelInputs) -> Result<Flow> {
        Ok(Flow::Continue)
    }
    /// Every [`Cadence::tick`].
    fn tick(&mut self, kernel: &mut dyn KernelInputs) -> Result<Flow>;
    /// Once, after the last event: `undecodable` records were skipped.
    fn finish(&mut self, _kernel: &mut dyn KernelInputs, _undecodable: u64) -> Result<()> {
        Ok(())
    }
}

/// Runs `stage` on live inputs until they end, a stop, or an error.
pub async fn run<S: EventSource, G: Stage>(
    inputs: &mut Inputs<S, G::Extra>,
    cadence: Cadence,
    stage: &mut G,
) -> Result<()> {
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let signals = inputs.stop.signals;
    let deadline = inputs.stop.after.map(|d| tokio::time::Instant::now() + d);
    let mut poll = tokio::time::interval(cadence.poll.unwrap_or(Duration::from_secs(3600)));
    let mut tick = tokio::time::interval(cadence.tick);
    let mut batch: Vec<SockEvent> = Vec::with_capacity(1024);
    let mut nat: Vec<NatEvent> = Vec::new();
    let kernel = inputs.kernel.as_mut();
    stage.start(kernel)?;
    loop {
        tokio::select! {
            _ = poll.tick(), if cadence.poll.is_some() => {
                drain(&mut inputs.events, &mut batch, &mut nat, stage, kernel)?;
            }
            more = inputs.events.next_batch(&mut batch) => {
                if !more? {
                    break;
                }
                inputs.events.take_nat(&mut nat);
                stage.events(&mut batch, &mut nat, kernel)?;
            }
            ev = next(inputs.conntrack.as_mut()), if inputs.conntrack.is_some() => match ev {
                Some(ev) => {
                    if ev.destroyed {
                        // The entry's records in the ring (its binding) were written before
                        // the kernel destroyed it: they go first, so the end finds its start.
                        drain(&mut inputs.events, &mut batch, &mut nat, stage, kernel)?;
                    }
                    stage.conntrack(ev, kernel)?
                }
                None => inputs.conntrack = None,
            },
            x = next(inputs.extra.as_mut()), if inputs.extra.is_some() => {
                let flow = match x {
                    Some(x) => stage.extra(x, kernel)?,
                    None => {
                        inputs.extra = None;
                        stage.extra_ended(kernel)?
                    }
                };
                if flow == Flow::Stop {
                    break;
                }
            }
            _ = tick.tick() => {
                if stage.tick(kernel)? == Flow::Stop
                    || deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
                {
                    break;
                }
            }
            _ = sigint.recv(), if signals => break,
            _ = sigterm.recv(), if signals => break,
        }
    }
    // What is already in the ring was seen by the kernel before we stopped: report it (a
    // ring's worth at most: under a flood the kernel would refill it forever), and the
    // conntrack events already queued.
    drain(&mut inputs.events, &mut batch, &mut nat, stage, kernel)?;
    if let Some(rx) = inputs.conntrack.as_mut() {
        while let Ok(ev) = rx.try_recv() {
            stage.conntrack(ev, kernel)?;
        }
    }
    stage.finish(kernel, inputs.events.undecodable())
}

/// A sink's write error, as the run reports it.
pub(crate) fn out_err(e: std::io::Error) -> Error {
    Error::io("writing output", e)
}

/// Listen queues are read every this many ticks (100 ms each), in at most this many
/// namespaces per reading.
pub(crate) const LISTEN_EVERY_TICKS: u32 = 20;
const LISTEN_NAMESPACES_PER_ROUND: usize = 32;

/// One reading of the listen queues where the table follows listeners, `cursor` the last
/// namespace read (the next reading goes on from there, wrapping: when there are more
/// namespaces than one reading takes, each gets its turn whatever others come and go): the
/// table's listeners learn their queues; the ones that dropped connection attempts since the
/// last reading come back.
pub(crate) fn read_listen_queues(
    table: &mut crate::model::SocketTable,
    queues: &mut crate::model::listen::ListenQueues,
    cursor: &mut u32,
    kernel: &mut dyn KernelInputs,
) -> Vec<crate::model::listen::ListenOverflow> {
    let all = table.listener_namespaces();
    if all.is_empty() {
        return Vec::new();
    }
    let after = cursor.saturating_add(1);
    let places: Vec<(u32, Option<u32>)> = all
        .range(after..)
        .chain(all.range(..after))
        .take(LISTEN_NAMESPACES_PER_ROUND)
        .map(|(ns, pid)| (*ns, *pid))
        .collect();
    if let Some(&(last, _)) = places.last() {
        *cursor = last;
    }
    let started = std::time::Instant::now();
    let (read, reading) = kernel.listeners(&places);
    tracing::debug!(
        "listen queues: {} listeners read in {} of {} namespaces in {:?}",
        reading.len(),
        read.len(),
        places.len(),
        started.elapsed()
    );
    queues.observe(&read, &reading, table)
}

/// Tells the sink when the loss counter moved past `seen` (then `seen` follows it).
pub(crate) fn report_loss(
    sink: &mut dyn crate::output::Sink,
    lost: u64,
    seen: &mut u64,
) -> Result<()> {
    if lost != *seen {
        sink.lost(lost - *seen, lost).map_err(out_err)?;
        *seen = lost;
    }
    Ok(())
}

/// Hands the stage everything the source holds right now, a batch at a time.
fn drain<S: EventSource, G: Stage>(
    events: &mut S,
    batch: &mut Vec<SockEvent>,
    nat: &mut Vec<NatEvent>,
    stage: &mut G,
    kernel: &mut dyn KernelInputs,
) -> Result<()> {
    // 256 batches of 4,096 records: more than a 16 MiB ring holds.
    for _ in 0..256 {
        if events.drain_now(batch) == 0 {
            break;
        }
        events.take_nat(nat);
        stage.events(batch, nat, kernel)?;
    }
    events.take_nat(nat);
    if !nat.is_empty() {
        stage.events(batch, nat, kernel)?;
    }
    Ok(())
}

/// The next item of an optional channel (never, without one).
async fn next<T>(rx: Option<&mut mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
