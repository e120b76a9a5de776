//! Renderings of `tracer trace`: each socket's numbered story with the time between steps, its
//! summary line, and a line per program; or the same as JSON records.
use crate::text;
use std::io::{self, Write};

use crate::model::story::{bytes, ProgramSummary, SocketStory};

/// ①…⑳, then (21), (22), …
fn number(n: usize) -> String {
    const CIRCLED: [&str; 20] = [
        "①", "②", "③", "④", "⑤", "⑥", "⑦", "⑧", "⑨", "⑩", "⑪", "⑫", "⑬", "⑭", "⑮", "⑯", "⑰", "⑱",
        "⑲", "⑳",
    ];
    CIRCLED
        .get(n - 1)
        .map_or_else(|| format!("({n})"), |c| c.to_string())
}

fn duration(ns: u64) -> String {
    match ns {
        0..1_000_000 => format!("{:.3} ms", ns as f64 / 1e6),
        1_000_000..1_000_000_000 => format!("{:.1} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}

fn endpoint(addr: Option<std::net::IpAddr>, port: u16) -> String {
    match addr {
        Some(std::net::IpAddr::V6(a)) => format!("[{a}]:{port}"),
        Some(a) => format!("{a}:{port}"),
        None => "-".into(),
    }
}

/// The one-line summary of a socket.
pub fn summary_line(s: &SocketStory) -> String {
    let mut parts = vec![match (s.rport, s.role.name()) {
        (0, role) => format!("{role} {}", endpoint(s.laddr, s.lport)),
        (_, role) => format!(
            "{role} {} ⇄ {}",
            endpoint(s.laddr, s.lport),
            endpoint(s.raddr, s.rport)
        ),
    }];
    if s.ephemeral {
        parts.push(format!("local port {} chosen by the kernel", s.lport));
    }
    match s.closed_ns {
        Some(end) => parts.push(format!(
            "lived {}",
            duration(end.saturating_sub(s.opened_ns))
        )),
        None => parts.push(format!(
            "still {} when tracing ended",
            s.last_state.unwrap_or("open")
        )),
    }
    if let Some(kind) = s.lifetime {
        parts.push(kind.to_string());
    }
    if !s.accepted.is_empty() {
        let ids: Vec<String> = s.accepted.iter().map(|i| (i + 1).to_string()).collect();
        parts.push(format!(
            "accepted {} connection{} (socket {})",
            s.accepted.len(),
            if s.accepted.len() == 1 { "" } else { "s" },
            ids.join(", ")
        ));
    }
    if s.data.sends + s.data.receives > 0 {
        parts.push(format!(
            "{} out, {} in",
            bytes(s.data.sent_bytes),
            bytes(s.data.received_bytes)
        ));
    }
    match (s.closed_first_by, s.time_wait) {
        (Some(first), Some(tw)) => parts.push(format!("{first} closed first, TIME_WAIT on {tw}")),
        (Some(first), None) => parts.push(format!("{first} closed first")),
        _ => {}
    }
    if !s.errors.is_empty() {
        parts.push(format!("errors: {}", s.errors.join(", ")));
    }
    parts.join("; ")
}

pub fn write_story(out: &mut impl Write, s: &SocketStory, explain: bool) -> io::Result<()> {
    writeln!(
        out,
        "── socket {} · {} (pid {}) · {} ──",
        s.id + 1,
        text::escape(s.comm.as_deref().unwrap_or("?")),
        s.pid.map_or("?".into(), |p| p.to_string()),
        s.role.name()
    )?;
    for (i, step) in s.steps.iter().enumerate() {
        let since = if i == 0 {
            String::new()
        } else {
            format!("+{}", duration(step.since_previous_ns))
        };
        writeln!(
            out,
            "  {} {:>11}  {}",
            number(i + 1),
            since,
            text::escape(&step.text)
        )?;
        if explain && !step.explain.is_empty() {
            writeln!(out, "  {:>13}    ↳ {}", "", text::escape(step.explain))?;
        }
    }
    writeln!(out, "  = {}", text::escape(&summary_line(s)))?;
    writeln!(out)
}

pub fn write_program(out: &mut impl Write, p: &ProgramSummary) -> io::Result<()> {
    let mut parts = Vec::new();
    if !p.listening.is_empty() {
        parts.push(format!("listened on {}", p.listening.join(", ")));
    }
    parts.push(format!(
        "{} connection{} made, {} accepted",
        p.connections_made,
        if p.connections_made == 1 { "" } else { "s" },
        p.connections_accepted
    ));
    if p.udp_sockets > 0 {
        parts.push(format!(
            "{} UDP socket{}",
            p.udp_sockets,
            if p.udp_sockets == 1 { "" } else { "s" }
        ));
    }
    if !p.ephemeral_ports.is_empty() {
        let ports: Vec<String> = p.ephemeral_ports.iter().map(u16::to_string).collect();
        parts.push(format!("ephemeral ports used: {}", ports.join(", ")));
    }
    parts.push(format!(
        "{} sent, {} received",
        bytes(p.sent_bytes),
        bytes(p.received_bytes)
    ));
    writeln!(
        out,
        "{} (pid {}): {}",
        text::escape(&p.comm),
        p.pid,
        text::escape(&parts.join("; "))
    )
}

pub fn write_json(out: &mut impl Write, value: &impl serde::Serialize) -> io::Result<()> {
    crate::text::json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use crate::model::story::fixtures::{book_of, client_events};

    #[test]
    fn a_client_story_explained() {
        let book = book_of(&client_events());
        let mut out = Vec::new();
        super::write_story(&mut out, &book.stories[0], true).unwrap();
        insta::assert_snapshot!("client_story_explained", String::from_utf8(out).unwrap());
    }
}
