//! `ports --live` as a stage: every socket event into the socket table, keys into the view's
//! state, and a redraw (only when something changed) at most every tick.
use crossterm::event::KeyEvent;
use ratatui::{backend::Backend, Terminal};
use tracer_common::{NatEvent, SockEvent};

use super::{Flow, KernelInputs, Stage};
use crate::{
    error::{Error, Result},
    model::{
        ephemeral::Usage,
        ports::{self, RowFilter},
        SocketTable,
    },
    output::tui::{self, Action, Screen, ViewState},
};

/// The live view: the table, what the user typed, and the terminal it draws on.
pub struct PortsLiveStage<B: Backend> {
    table: SocketTable,
    state: ViewState,
    terminal: Terminal<B>,
    /// What the command line asked for (the namespace and protocol narrow the usage shown).
    filter: RowFilter,
    events: u64,
    dirty: bool,
    ticks: u32,
    /// Listen queues, read every 2 s for the RECV-Q/SEND-Q columns.
    listen: crate::model::listen::ListenQueues,
    listen_cursor: u32,
    /// Cgroup → container, for the CONTAINER column and tab.
    containers: crate::model::container::Containers,
}

impl<B: Backend> PortsLiveStage<B> {
    /// `table` holds the start-up snapshot; `state` the command line's filter and order.
    pub fn new(
        table: SocketTable,
        state: ViewState,
        terminal: Terminal<B>,
        filter: RowFilter,
    ) -> Self {
        PortsLiveStage {
            table,
            state,
            terminal,
            filter,
            events: 0,
            dirty: true,
            ticks: 0,
            listen: Default::default(),
            listen_cursor: 0,
            containers: Default::default(),
        }
    }

    /// The terminal, to check what was drawn (tests) or hand it back.
    pub fn terminal(&self) -> &Terminal<B> {
        &self.terminal
    }

    fn draw(&mut self, lost: u64, kernel: &mut dyn KernelInputs) -> Result<()> {
        let usage = usage_of(&self.table, &self.filter);
        let netns = self.filter.netns;
        let mut rows = ports::rows_with_time_wait(&self.table);
        let now = kernel.now_ns();
        for row in &mut rows {
            let (cgroup, pid) = (row.cgroup, row.pid);
            row.container = self
                .containers
                .of(cgroup, now, || kernel.container(cgroup, pid));
        }
        let screen = Screen {
            rows,
            ranges: self
                .table
                .usage()
                .namespaces()
                .into_iter()
                .filter(|ns| netns.is_none_or(|n| n == *ns))
                .filter_map(|ns| self.table.usage().range(ns).map(|r| (ns, r)))
                .collect(),
            usage,
            events: self.events,
            lost,
        };
        let state = &self.state;
        self.terminal
            .draw(|f| tui::draw(f, state, &screen))
            .map_err(|e| Error::io("drawing", std::io::Error::other(e.to_string())))?;
        self.dirty = false;
        Ok(())
    }
}

/// The ephemeral usage the filter's namespace and protocol select.
pub fn usage_of(table: &SocketTable, filter: &RowFilter) -> Vec<Usage> {
    table
        .usage()
        .report()
        .into_iter()
        .filter(|u| filter.netns.is_none_or(|n| n == u.netns))
        .filter(|u| filter.proto.is_none_or(|p| p == u.proto))
        .collect()
}

impl<B: Backend> Stage for PortsLiveStage<B> {
    /// A key, or None when the terminal was resized.
    type Extra = Option<KeyEvent>;

    fn events(
        &mut self,
        batch: &mut Vec<SockEvent>,
        _nat: &mut Vec<NatEvent>,
        _kernel: &mut dyn KernelInputs,
    ) -> Result<()> {
        self.events += batch.len() as u64;
        for ev in batch.drain(..) {
            self.table.observe(&ev);
        }
        self.dirty = true;
        Ok(())
    }

    fn extra(&mut self, key: Option<KeyEvent>, _kernel: &mut dyn KernelInputs) -> Result<Flow> {
        match key.map(|k| tui::handle_key(&mut self.state, k)) {
            Some(Action::Quit) => return Ok(Flow::Stop),
            Some(Action::Redraw) | None => self.dirty = true,
            Some(Action::Nothing) => {}
        }
        Ok(Flow::Continue)
    }

    /// The key reader is gone (no terminal to read): quit.
    fn extra_ended(&mut self, _kernel: &mut dyn KernelInputs) -> Result<Flow> {
        Ok(Flow::Stop)
    }

    fn tick(&mut self, kernel: &mut dyn KernelInputs) -> Result<Flow> {
        self.ticks += 1;
        if self.ticks.is_multiple_of(100) {
            self.table.sweep(kernel.now_ns());
            // Namespaces that are gone: their ranges and usage go too.
            let gone = kernel.gone_namespaces(&self.table.usage().known_namespaces());
            self.table
                .usage_mut()
                .retain_namespaces(|ns| !gone.contains(&ns));
        }
        for ns in self.table.usage().namespaces() {
            if let Some(range) = kernel.port_range(ns, None) {
                self.table.usage_mut().set_range(ns, range);
                if let Some(v) = kernel.tw_reuse(ns) {
                    self.table.usage_mut().set_tw_reuse(ns, v);
                }
            }
        }
        self.table.usage_mut().take_warnings();
        if self.ticks.is_multiple_of(super::LISTEN_EVERY_TICKS) {
            super::read_listen_queues(
                &mut self.table,
                &mut self.listen,
                &mut self.listen_cursor,
                kernel,
            );
            self.dirty = true;
        }
        if self.dirty {
            let lost = kernel.lost();
            self.draw(lost, kernel)?;
        }
        Ok(Flow::Continue)
    }
}
