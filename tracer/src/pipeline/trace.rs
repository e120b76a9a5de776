//! `trace` as a stage: every event through the socket table into the story book; each story
//! printed once its socket has closed; the run ends when the traced command exits (after a
//! short grace for the last FIN/ACK transitions), the followed processes are gone, or a
//! signal says stop.
use std::{io::Write, process::ExitStatus, time::Duration};

use tracer_common::{NatEvent, SockEvent};

use super::{out_err, Flow, KernelInputs, Stage};
use crate::{
    error::Result,
    model::{
        story::{SocketStory, StoryBook},
        Clock, Event, SocketTable,
    },
    output::story as render,
};

/// How long after the command exits tracer keeps reading: the last FIN/ACK transitions.
pub const CLOSING_GRACE: Duration = Duration::from_millis(300);

/// The trace's own inputs.
#[derive(Debug)]
pub enum TraceInput {
    /// The command tracer started exited (None: its status could not be read).
    Exited(Option<ExitStatus>),
    /// Stdout's reader is gone.
    StdoutClosed,
    /// SIGINT or SIGTERM arrived.
    Signal(i32),
}

/// How a story is printed.
#[derive(Clone, Copy, Debug)]
pub struct StoryFormat {
    pub json: bool,
    pub explain: bool,
    /// The language of `--explain`'s sentences.
    pub lang: crate::i18n::Lang,
}

/// The stories of the followed processes' sockets.
pub struct TraceStage<W: Write> {
    pub table: SocketTable,
    pub book: StoryBook,
    clock: Clock,
    format: StoryFormat,
    out: W,
    /// `--pid`: the processes followed (the run ends once all are gone).
    pids: Vec<u32>,
    /// The command tracer started, if any.
    child: Option<u32>,
    /// Whether SIGINT reaches the command from the terminal by itself.
    interactive: bool,
    /// The command's exit status, once it exited.
    pub status: Option<ExitStatus>,
    stop_at_ns: Option<u64>,
    pub events: u64,
    /// Cgroup → container, for the stories' and programs' container.
    containers: crate::model::container::Containers,
    /// A userland proxy's two sockets, joined in their stories.
    proxies: crate::model::proxy::ProxyLinks,
    /// When the published ports were last asked for.
    published_ns: Option<u64>,
}

impl<W: Write> TraceStage<W> {
    /// `table` and `book` hold the sockets that predate the trace (`--pid`, `--comm`).
    // Each argument is one thing the command resolved; a struct would only rename the list.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        table: SocketTable,
        book: StoryBook,
        clock: Clock,
        format: StoryFormat,
        out: W,
        pids: Vec<u32>,
        child: Option<u32>,
        interactive: bool,
    ) -> Self {
        TraceStage {
            table,
            book,
            clock,
            format,
            out,
            pids,
            child,
            interactive,
            status: None,
            stop_at_ns: None,
            events: 0,
            containers: Default::default(),
            proxies: Default::default(),
            published_ns: None,
        }
    }

    /// The story book and the writer, for the report after the run.
    pub fn parts(&mut self) -> (&mut StoryBook, &mut W) {
        (&mut self.book, &mut self.out)
    }

    fn print_finished(&mut self, now_ns: u64) -> Result<()> {
        let now = self.clock.wall_ns(now_ns);
        for id in self.book.take_finished(now) {
            print_story(&mut self.out, &self.book.stories[id], self.format).map_err(out_err)?;
        }
        self.out.flush().map_err(out_err)
    }

    /// A signal while the command runs goes to it (unless the terminal already sent it
    /// SIGINT); otherwise it stops the trace.
    fn signal(&mut self, sig: i32) -> Flow {
        match self.child {
            Some(pid) if self.status.is_none() => {
                if sig != libc::SIGINT || !self.interactive {
                    forward(pid, sig);
                }
                Flow::Continue
            }
            _ => Flow::Stop,
        }
    }
}

pub fn print_story(
    out: &mut impl Write,
    story: &SocketStory,
    format: StoryFormat,
) -> std::io::Result<()> {
    if format.json {
        render::write_story_json(out, story)
    } else {
        render::write_story(out, story, format.explain.then_some(format.lang))
    }
}

fn forward(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) to our own child (as another user: CAP_KILL is kept for this).
    unsafe { libc::kill(pid as i32, sig) };
}

impl<W: Write> Stage for TraceStage<W> {
    type Extra = TraceInput;

    fn events(
        &mut self,
        batch: &mut Vec<SockEvent>,
        _nat: &mut Vec<NatEvent>,
        kernel: &mut dyn KernelInputs,
    ) -> Result<()> {
        self.events += batch.len() as u64;
        for raw in batch.drain(..) {
            let attribution = self.table.observe(&raw);
            let range = kernel.port_range(raw.netns, attribution.owner.map(|o| o.pid));
            let mut event = Event::new(&raw, &attribution, range, &self.clock);
            if let Some(owner) = attribution.owner {
                event.container = self.containers.of(owner.cgroup, raw.ts_ns, || {
                    kernel.container(owner.cgroup, Some(owner.pid))
                });
            }
            self.book.observe(&raw, &event);
            if self.proxies.active() {
                let call = crate::model::proxy::Call::of(&raw, &attribution, true);
                if let Some(p) = call.and_then(|c| self.proxies.observe(c)) {
                    self.book.proxied(&p);
                }
            }
        }
        let now = kernel.now_ns();
        self.print_finished(now)
    }

    fn extra(&mut self, input: TraceInput, kernel: &mut dyn KernelInputs) -> Result<Flow> {
        Ok(match input {
            TraceInput::Exited(None) => Flow::Stop,
            TraceInput::Exited(status) => {
                self.status = status;
                self.stop_at_ns = Some(kernel.now_ns() + CLOSING_GRACE.as_nanos() as u64);
                Flow::Continue
            }
            TraceInput::StdoutClosed => {
                return Err(out_err(std::io::ErrorKind::BrokenPipe.into()));
            }
            TraceInput::Signal(sig) => self.signal(sig),
        })
    }

    fn tick(&mut self, kernel: &mut dyn KernelInputs) -> Result<Flow> {
        let now = kernel.now_ns();
        if self
            .published_ns
            .is_none_or(|t| now.saturating_sub(t) >= 1_000_000_000)
        {
            self.published_ns = Some(now);
            let published = kernel.published();
            self.proxies
                .set_published(published.ports, published.host_netns);
        }
        self.print_finished(now)?;
        if self.stop_at_ns.is_some_and(|t| now >= t) {
            return Ok(Flow::Stop);
        }
        // --pid: stop once every followed process has exited.
        if self.child.is_none() && !self.pids.is_empty() && !kernel.any_alive(&self.pids) {
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }
}
