//! The live ports view (`tracer ports --live`): a full-screen ratatui screen with four tabs —
//! a line per process, a row per socket, connections grouped by remote endpoint, a line per
//! container — and a footer
//! with the ephemeral-range usage. Drawing is a pure function of [`Screen`] and [`ViewState`], so
//! it is snapshot-tested on ratatui's test backend; the terminal loop lives in
//! `commands::ports`.
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row, Table, Tabs},
    Frame,
};

use crate::model::{
    ephemeral::{Usage, WARN_PERCENT},
    ports::{self, PortRow, ProcessLine, RowFilter, SortKey},
    types::Proto,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    Processes,
    Sockets,
    Remotes,
    Containers,
}

impl Tab {
    pub(crate) const ALL: [Tab; 4] = [Tab::Processes, Tab::Sockets, Tab::Remotes, Tab::Containers];

    fn title(self) -> &'static str {
        match self {
            Tab::Processes => "1 Processes",
            Tab::Sockets => "2 Sockets",
            Tab::Remotes => "3 Remotes",
            Tab::Containers => "4 Containers",
        }
    }
}

/// What the user has chosen: tab, sort, filter, scroll position.
#[derive(Clone, Debug)]
pub struct ViewState {
    pub tab: Tab,
    pub sort: SortKey,
    pub reverse: bool,
    pub filter: RowFilter,
    /// The filter text while `/` is being typed.
    pub editing: Option<String>,
    pub scroll: usize,
}

impl ViewState {
    pub fn new(filter: RowFilter, sort: SortKey, reverse: bool) -> Self {
        ViewState {
            tab: Tab::Processes,
            sort,
            reverse,
            filter,
            editing: None,
            scroll: 0,
        }
    }
}

/// What a key press asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    Redraw,
    Nothing,
}

pub fn handle_key(state: &mut ViewState, key: KeyEvent) -> Action {
    if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
        return Action::Quit;
    }
    if let Some(text) = state.editing.as_mut() {
        match key.code {
            KeyCode::Enter => {
                state.filter.text = state.editing.take().unwrap_or_default();
                state.scroll = 0;
            }
            KeyCode::Esc => {
                state.editing = None;
                state.filter.text.clear();
            }
            KeyCode::Backspace => {
                text.pop();
            }
            KeyCode::Char(c) => text.push(c),
            _ => return Action::Nothing,
        }
        return Action::Redraw;
    }
    match key.code {
        KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
        KeyCode::Char('/') => state.editing = Some(state.filter.text.clone()),
        KeyCode::Tab => {
            let i = Tab::ALL.iter().position(|t| *t == state.tab).unwrap_or(0);
            state.tab = Tab::ALL[(i + 1) % Tab::ALL.len()];
            state.scroll = 0;
        }
        KeyCode::Char('1') => state.tab = Tab::Processes,
        KeyCode::Char('2') => state.tab = Tab::Sockets,
        KeyCode::Char('3') => state.tab = Tab::Remotes,
        KeyCode::Char('4') => state.tab = Tab::Containers,
        KeyCode::Char('s') | KeyCode::Right => state.sort = state.sort.next(),
        KeyCode::Left => {
            let all = SortKey::ALL;
            let i = all.iter().position(|k| *k == state.sort).unwrap_or(0);
            state.sort = all[(i + all.len() - 1) % all.len()];
        }
        KeyCode::Char('r') => state.reverse = !state.reverse,
        KeyCode::Char('t') => state.filter.time_wait = !state.filter.time_wait,
        KeyCode::Down | KeyCode::Char('j') => state.scroll += 1,
        KeyCode::Up | KeyCode::Char('k') => state.scroll = state.scroll.saturating_sub(1),
        KeyCode::PageDown => state.scroll += 10,
        KeyCode::PageUp => state.scroll = state.scroll.saturating_sub(10),
        KeyCode::Home => state.scroll = 0,
        _ => return Action::Nothing,
    }
    Action::Redraw
}

/// The data one frame shows.
#[derive(Clone, Debug, Default)]
pub struct Screen {
    /// Every socket (the view filters and sorts).
    pub rows: Vec<PortRow>,
    /// Each namespace's ephemeral range.
    pub ranges: Vec<(u32, (u16, u16))>,
    pub usage: Vec<Usage>,
    pub events: u64,
    pub lost: u64,
}

/// The TUI's short port class: the IANA class (wk, reg, dyn), prefixed `eph/` when the
/// kernel chose the port. The footer carries the legend.
fn short_class(r: &PortRow) -> String {
    let iana = match r.lport_class {
        "well-known" => "wk",
        "registered" => "reg",
        _ => "dyn",
    };
    if r.ephemeral {
        format!("eph/{iana}")
    } else {
        iana.to_string()
    }
}

fn endpoint(addr: &std::net::IpAddr, port: u16) -> String {
    crate::model::types::Endpoint::new(*addr, port).to_string()
}

pub fn draw(frame: &mut Frame, state: &ViewState, screen: &Screen) {
    let mut rows: Vec<PortRow> = screen
        .rows
        .iter()
        .filter(|r| state.filter.allows(r))
        .cloned()
        .collect();
    ports::sort(&mut rows, state.sort, state.reverse);
    let footer_height = (screen.usage.len().min(3) + 3) as u16;
    let [title, tabs, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(footer_height),
    ])
    .areas(frame.area());

    let processes = ports::by_process(&rows);
    draw_header(frame, title, rows.len(), processes.len());
    draw_tabs(frame, tabs, state);
    match state.tab {
        Tab::Processes => draw_processes(frame, body, &processes, state.scroll),
        Tab::Sockets => draw_sockets(frame, body, &rows, state.scroll),
        Tab::Remotes => draw_remotes(frame, body, &rows, state.scroll),
        Tab::Containers => draw_containers(frame, body, &rows, state.scroll),
    }
    draw_footer(frame, footer, screen, &filter_text(state));
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

/// The title line: counts and the keys.
fn draw_header(frame: &mut Frame, area: Rect, sockets: usize, processes: usize) {
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("tracer ports --live", bold()),
            Span::raw(format!(
                "  {sockets} sockets  {processes} processes   q:quit /:filter Tab:view s,r:sort"
            )),
        ])),
        area,
    );
}

/// The tab bar, then the sort order.
fn draw_tabs(frame: &mut Frame, area: Rect, state: &ViewState) {
    let titles: Vec<Line> = Tab::ALL.iter().map(|t| Line::from(t.title())).collect();
    let selected = Tab::ALL.iter().position(|t| *t == state.tab).unwrap_or(0);
    let sort = format!(
        " sort: {}{}",
        state.sort.name(),
        if state.reverse { " ↓" } else { " ↑" }
    );
    let [tab_area, info_area] =
        Layout::horizontal([Constraint::Length(52), Constraint::Min(10)]).areas(area);
    frame.render_widget(
        Tabs::new(titles)
            .select(selected)
            .highlight_style(bold().add_modifier(Modifier::REVERSED)),
        tab_area,
    );
    frame.render_widget(Paragraph::new(sort), info_area);
}

/// The filter being typed, or applied (shown on the last line: the tab line has no room for
/// it beside four tabs).
fn filter_text(state: &ViewState) -> String {
    match &state.editing {
        Some(text) => format!("  filter: {}▏", crate::text::escape(text)),
        None if !state.filter.text.is_empty() => {
            format!("  filter: {}", crate::text::escape(&state.filter.text))
        }
        None => String::new(),
    }
}

/// Tab 1: a line per process.
fn draw_processes(frame: &mut Frame, area: Rect, processes: &[ProcessLine], scroll: usize) {
    let lines: Vec<Row> = processes
        .iter()
        .map(|p| {
            Row::new(vec![
                Cell::from(p.pid.to_string()),
                Cell::from(crate::text::escape(&p.comm).into_owned()),
                Cell::from(crate::text::escape(&p.container).into_owned()),
                Cell::from(if p.listening.is_empty() {
                    "-".to_string()
                } else {
                    p.listening.join(" ")
                }),
                Cell::from(p.connections.to_string()),
                Cell::from(p.ephemeral.to_string()),
                Cell::from(p.remotes.to_string()),
            ])
        })
        .collect();
    let header = Row::new([
        "PID",
        "COMM",
        "CONTAINER",
        "LISTENING",
        "CONNS",
        "EPHEM",
        "REMOTES",
    ]);
    let widths = [
        Constraint::Length(7),
        Constraint::Length(15),
        Constraint::Length(12),
        Constraint::Min(12),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(7),
    ];
    render_table(frame, area, header, lines, &widths, scroll);
}

/// Tab 4: a line per container (the host is one), its listeners and connections.
fn draw_containers(frame: &mut Frame, area: Rect, rows: &[PortRow], scroll: usize) {
    let lines: Vec<Row> = ports::by_container(rows)
        .iter()
        .map(|c| {
            Row::new(vec![
                Cell::from(crate::text::escape(&c.container).into_owned()),
                Cell::from(c.short_id.clone().unwrap_or_else(|| "-".into())),
                Cell::from(c.runtime.unwrap_or("-")),
                Cell::from(c.processes.to_string()),
                Cell::from(if c.listening.is_empty() {
                    "-".to_string()
                } else {
                    c.listening.join(" ")
                }),
                Cell::from(c.connections.to_string()),
                Cell::from(c.ephemeral.to_string()),
            ])
        })
        .collect();
    let header = Row::new([
        "CONTAINER",
        "ID",
        "RUNTIME",
        "PROCS",
        "LISTENING",
        "CONNS",
        "EPHEM",
    ]);
    let widths = [
        Constraint::Length(16),
        Constraint::Length(12),
        Constraint::Length(10),
        Constraint::Length(5),
        Constraint::Min(12),
        Constraint::Length(6),
        Constraint::Length(6),
    ];
    render_table(frame, area, header, lines, &widths, scroll);
}

/// Tab 2: a row per socket.
fn draw_sockets(frame: &mut Frame, area: Rect, rows: &[PortRow], scroll: usize) {
    let lines: Vec<Row> = rows
        .iter()
        .map(|r| {
            Row::new(vec![
                Cell::from(r.proto.name()),
                Cell::from(endpoint(&r.laddr, r.lport)),
                Cell::from(if r.rport == 0 {
                    "*".to_string()
                } else {
                    endpoint(&r.raddr, r.rport)
                }),
                // A listener's accept queue and backlog, as ss's Recv-Q/Send-Q.
                Cell::from(match (r.listening, r.recv_q, r.send_q) {
                    (true, Some(queue), Some(backlog)) if r.proto == Proto::Tcp => {
                        format!("{} {queue}/{backlog}", r.state.name())
                    }
                    _ => r.state.name().to_string(),
                }),
                Cell::from(format!(
                    "{}/{}{}",
                    r.pid.map_or("-".to_string(), |p| p.to_string()),
                    crate::text::escape(r.comm.as_deref().unwrap_or("-")),
                    match r.owners.len() {
                        0 | 1 => String::new(),
                        n => format!("+{}", n - 1),
                    }
                )),
                Cell::from(short_class(r)),
            ])
        })
        .collect();
    let header = Row::new([
        "PROTO",
        "LOCAL",
        "REMOTE",
        "STATE Q/BL",
        "PID/COMM",
        "CLASS",
    ]);
    let widths = [
        Constraint::Length(5),
        Constraint::Length(16),
        Constraint::Length(16),
        Constraint::Length(13),
        Constraint::Length(17),
        Constraint::Min(7),
    ];
    render_table(frame, area, header, lines, &widths, scroll);
}

/// Tab 3: connections grouped by remote endpoint, each group's local ends under it.
fn draw_remotes(frame: &mut Frame, area: Rect, rows: &[PortRow], scroll: usize) {
    let mut lines = Vec::new();
    for g in ports::by_remote(rows) {
        lines.push(
            Row::new(vec![
                Cell::from(format!(
                    "{} {} ({})",
                    g.proto,
                    endpoint(&g.raddr, g.rport),
                    g.rport_class
                )),
                Cell::from(format!(
                    "{} conn, {} local ports",
                    g.connections, g.local_ports
                )),
            ])
            .style(bold()),
        );
        for l in &g.locals {
            lines.push(Row::new(vec![
                Cell::from(format!(
                    "  ← {}{}",
                    endpoint(&l.laddr, l.lport),
                    if l.ephemeral { " ephemeral" } else { "" }
                )),
                Cell::from(format!(
                    "{} {}/{}",
                    l.state,
                    l.pid.map_or("-".to_string(), |p| p.to_string()),
                    crate::text::escape(l.comm.as_deref().unwrap_or("-"))
                )),
            ]));
        }
    }
    let header = Row::new(["REMOTE ENDPOINT ← LOCAL ENDS", "CONNECTIONS / OWNER"]);
    let widths = [Constraint::Length(44), Constraint::Min(20)];
    render_table(frame, area, header, lines, &widths, scroll);
}

/// The footer: the ephemeral range and the class legend, the busiest usage lines (reversed
/// at the warning level), and the event counts.
fn draw_footer(frame: &mut Frame, area: Rect, screen: &Screen, filter: &str) {
    let mut foot: Vec<Line> = Vec::new();
    let mut ranges: Vec<String> = screen
        .ranges
        .iter()
        .map(|(_, (lo, hi))| format!("{lo}-{hi}"))
        .collect();
    ranges.dedup();
    foot.push(Line::from(format!(
        "Ephemeral: kernel range {} · IANA dynamic 49152-65535",
        if ranges.is_empty() {
            "unknown".to_string()
        } else {
            ranges.join(", ")
        }
    )));
    foot.push(Line::from(
        "CLASS wk/reg/dyn: IANA well-known/registered/dynamic · eph/: kernel-chosen",
    ));
    for u in screen.usage.iter().take(3) {
        let text = format!(
            " {} {}: {}/{} in use, {} left ({:.1}%), peak {} · netns {}",
            u.proto,
            u.remote()
                .map_or_else(|| "bound".to_string(), |r| format!("→{r}")),
            u.in_use,
            u.range_size,
            u.headroom,
            u.percent,
            u.peak,
            u.netns
        );
        let style = if u.percent >= WARN_PERCENT {
            bold().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
        };
        foot.push(Line::styled(text, style));
    }
    foot.push(Line::from(format!(
        "events {}  lost {}{filter}",
        screen.events, screen.lost
    )));
    frame.render_widget(Paragraph::new(foot), area);
}

/// A table with its header, scrolled so that `scroll` stays within what fits (the header
/// takes one line of `area`).
fn render_table(
    frame: &mut Frame,
    area: Rect,
    header: Row,
    lines: Vec<Row>,
    widths: &[Constraint],
    scroll: usize,
) {
    let visible = area.height.saturating_sub(1) as usize;
    let total = lines.len();
    let start = scroll.min(total.saturating_sub(visible));
    let shown: Vec<Row> = lines.into_iter().skip(start).collect();
    let bold = Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED);
    frame.render_widget(
        Table::new(shown, widths.to_vec()).header(header.style(bold)),
        area,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ports::fixtures::sample_table, SocketTable};
    use ratatui::{backend::TestBackend, Terminal};

    fn render(state: &ViewState, screen: &Screen) -> String {
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        terminal.draw(|f| draw(f, state, screen)).unwrap();
        let buffer = terminal.backend().buffer();
        let mut out = String::new();
        for y in 0..buffer.area.height {
            let line: String = (0..buffer.area.width)
                .map(|x| buffer[(x, y)].symbol())
                .collect();
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    fn screen(table: &SocketTable) -> Screen {
        Screen {
            rows: ports::rows(table),
            ranges: vec![(1, (32768, 60999))],
            usage: table.usage().report(),
            events: 1234,
            lost: 0,
        }
    }

    #[test]
    fn tabs_render_at_80x24() {
        let table = sample_table();
        let screen = screen(&table);
        let mut state = ViewState::new(RowFilter::default(), SortKey::Proto, false);
        insta::assert_snapshot!("processes", render(&state, &screen));
        state.tab = Tab::Sockets;
        insta::assert_snapshot!("sockets", render(&state, &screen));
        state.tab = Tab::Remotes;
        insta::assert_snapshot!("remotes", render(&state, &screen));
    }

    #[test]
    fn keys_filter_sort_scroll_and_quit() {
        use crossterm::event::KeyEvent;
        let key = |c| KeyEvent::new(c, KeyModifiers::NONE);
        let table = sample_table();
        let screen = screen(&table);
        let mut state = ViewState::new(RowFilter::default(), SortKey::Proto, false);
        assert_eq!(handle_key(&mut state, key(KeyCode::Tab)), Action::Redraw);
        assert_eq!(state.tab, Tab::Sockets);
        handle_key(&mut state, key(KeyCode::Char('/')));
        for c in "chromium".chars() {
            handle_key(&mut state, key(KeyCode::Char(c)));
        }
        handle_key(&mut state, key(KeyCode::Enter));
        assert_eq!(state.filter.text, "chromium");
        handle_key(&mut state, key(KeyCode::Char('s'))); // laddr
        handle_key(&mut state, key(KeyCode::Char('s'))); // lport
        handle_key(&mut state, key(KeyCode::Char('r')));
        insta::assert_snapshot!("sockets_filtered_by_lport_desc", render(&state, &screen));
        handle_key(&mut state, key(KeyCode::Down));
        assert_eq!(state.scroll, 1);
        assert_eq!(
            handle_key(&mut state, key(KeyCode::Char('q'))),
            Action::Quit
        );
    }
}
