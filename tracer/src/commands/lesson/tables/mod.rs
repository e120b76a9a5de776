//! Each lesson's table, built from what the trace printed (`socket_story` records and their
//! steps' `detail`) and checked against what the scenario's own calls returned.
use serde_json::{json, Value};
use tracer_common::PortClass;

use super::{Built, Check, Gathered, Row};
use crate::i18n::Lang;

mod nat;
mod ports;
mod sockets;
mod tcp;
mod udp;

/// Builds lesson `name`'s rows, notes and checks.
pub fn build(name: &str, g: &Gathered, lang: Lang) -> Built {
    let stories = Stories::of(&g.records);
    let mut b = Built::default();
    match name {
        "ports" => ports::ports(&mut b, g, lang),
        "tcp-server" => tcp::tcp_server(&mut b, &stories, g, lang),
        "tcp-client" => tcp::tcp_client(&mut b, &stories, g, lang),
        "udp" => udp::udp(&mut b, &stories, g, lang),
        "handshake" => tcp::handshake(&mut b, &stories, g, lang),
        "ephemeral" => sockets::ephemeral(&mut b, &stories, g, lang),
        "socket" => sockets::socket(&mut b, &stories, g, lang),
        "http" => sockets::http(&mut b, &stories, g, lang),
        "nat" => nat::nat(&mut b, g, lang),
        _ => {}
    }
    b
}

/// The trace's socket stories.
struct Stories<'a>(Vec<&'a Value>);

impl<'a> Stories<'a> {
    fn of(records: &'a [Value]) -> Self {
        Stories(
            records
                .iter()
                .filter(|r| r["type"] == "socket_story")
                .collect(),
        )
    }

    fn role(&self, role: &str) -> Option<&'a Value> {
        self.0.iter().copied().find(|s| s["role"] == role)
    }

    fn all(&self, role: &str) -> Vec<&'a Value> {
        self.0
            .iter()
            .copied()
            .filter(|s| s["role"] == role)
            .collect()
    }

    /// The UDP story that has a step `what`.
    fn udp_with(&self, what: &str) -> Option<&'a Value> {
        self.all("udp")
            .into_iter()
            .find(|s| step(s, what).is_some())
    }
}

fn steps(story: &Value) -> &[Value] {
    story["steps"].as_array().map_or(&[], Vec::as_slice)
}

/// The detail of the story's first step `what`.
fn step<'a>(story: &'a Value, what: &str) -> Option<&'a Value> {
    steps(story)
        .iter()
        .find(|s| s["what"] == what)
        .map(|s| &s["detail"])
}

/// The story's TCP transitions, in order.
fn transitions(story: &Value) -> Vec<(String, String)> {
    steps(story)
        .iter()
        .filter_map(|s| {
            let d = &s["detail"];
            Some((
                d["old_state"].as_str()?.to_string(),
                d["new_state"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// `A → B → C` from consecutive transitions starting at `from` (the first transition whose
/// old state it is), as far as they chain; `until`: stop after reaching that state.
fn chain(story: &Value, from: &str, until: Option<&str>) -> Option<String> {
    let all = transitions(story);
    let start = all.iter().position(|(old, _)| old == from)?;
    let mut states = vec![all[start].0.clone()];
    for (old, new) in &all[start..] {
        if Some(old.as_str()) != states.last().map(String::as_str) {
            break;
        }
        states.push(new.clone());
        if until == Some(new.as_str()) {
            break;
        }
    }
    Some(states.join(" → "))
}

fn class(lang: Lang, port: u16) -> &'static str {
    lang.t(&format!("class.{}", PortClass::of(port).as_str()))
}

fn proto_name(v: &Value) -> String {
    v.as_str().unwrap_or("?").to_uppercase()
}

fn family_name(v: &Value) -> &'static str {
    match v.as_str() {
        Some("ipv4") => "IPv4",
        Some("ipv6") => "IPv6",
        _ => "?",
    }
}

fn duration(ns: u64) -> String {
    if ns < 1_000_000 {
        format!("{:.0} µs", ns as f64 / 1e3)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

fn port_of(v: &Value) -> u16 {
    v.as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0)
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("?").to_string()
}

fn row(
    step: &str,
    call: &str,
    notes: String,
    live: Option<String>,
    values: Value,
    lang: Lang,
) -> Row {
    Row {
        step: step.to_string(),
        call: call.to_string(),
        notes,
        live: live.unwrap_or_else(|| lang.t("missing").to_string()),
        values,
    }
}

fn check(b: &mut Built, what: &'static str, kernel: Value, program: Value) {
    b.checks.push(Check {
        what,
        kernel,
        program,
    });
}

fn socket_row(
    b: &mut Built,
    story: Option<&Value>,
    notes_key: &str,
    program_fd: &Value,
    lang: Lang,
) {
    let d = story.and_then(|s| step(s, "socket"));
    let live = d.map(|d| {
        lang.f(
            "live.socket",
            &[
                ("fd", &d["fd"]),
                ("proto", &proto_name(&d["proto"])),
                ("family", &family_name(&d["family"])),
            ],
        )
    });
    b.rows.push(row(
        "①",
        "socket()",
        lang.t(notes_key).into(),
        live,
        d.cloned().unwrap_or(Value::Null),
        lang,
    ));
    check(
        b,
        "socket() fd",
        d.map_or(Value::Null, |d| d["fd"].clone()),
        program_fd.clone(),
    );
}

fn bind_row(
    b: &mut Built,
    story: Option<&Value>,
    notes_key: &str,
    program_port: &Value,
    lang: Lang,
) -> u16 {
    let d = story.and_then(|s| step(s, "bind"));
    let port = d.map_or(0, |d| port_of(&d["port"]));
    let live = d.map(|d| {
        let key = if d["kernel_chose"] == true {
            "live.bind.chosen"
        } else {
            "live.bind"
        };
        lang.f(
            key,
            &[
                ("local", &text(&d["local"])),
                ("port", &port),
                ("class", &class(lang, port)),
            ],
        )
    });
    b.rows.push(row(
        "②",
        "bind()",
        lang.t(notes_key).into(),
        live,
        d.cloned().unwrap_or(Value::Null),
        lang,
    ));
    check(
        b,
        "bind() port (getsockname)",
        json!(port),
        program_port.clone(),
    );
    port
}

fn close_row(b: &mut Built, step_label: &str, story: Option<&Value>, from: &str, lang: Lang) {
    let d = story.and_then(|s| step(s, "close"));
    let states = story.and_then(|s| chain(s, from, None));
    let live = d.map(|d| {
        lang.f(
            "live.close",
            &[
                ("fd", &d["fd"]),
                (
                    "states",
                    &states.clone().unwrap_or_else(|| lang.t("missing").into()),
                ),
            ],
        )
    });
    let values = json!({"fd": d.map(|d| d["fd"].clone()), "states": states});
    b.rows.push(row(
        step_label,
        "close()",
        lang.t("tcp.close").into(),
        live,
        values,
        lang,
    ));
}

fn range_note(b: &mut Built, g: &Gathered, port: u16, lang: Lang) {
    if port != 0 {
        b.beyond.push(lang.f(
            "beyond.range",
            &[("port", &port), ("low", &g.range.0), ("high", &g.range.1)],
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn story(role: &str, steps: Value) -> Value {
        json!({"type": "socket_story", "role": role, "steps": steps})
    }

    #[test]
    fn a_chain_follows_consecutive_transitions() {
        let s = story(
            "client",
            json!([
                {"what": "socket", "detail": {"fd": 3}},
                {"what": "syn_sent", "detail": {"old_state": "CLOSE", "new_state": "SYN_SENT"}},
                {"what": "handshake", "detail": {"old_state": "SYN_SENT", "new_state": "ESTABLISHED"}},
                {"what": "close_first", "detail": {"old_state": "ESTABLISHED", "new_state": "FIN_WAIT1"}},
                {"what": "fin_wait2", "detail": {"old_state": "FIN_WAIT1", "new_state": "FIN_WAIT2"}},
                {"what": "time_wait", "detail": {"old_state": "FIN_WAIT2", "new_state": "TIME_WAIT"}},
            ]),
        );
        assert_eq!(
            chain(&s, "CLOSE", Some("ESTABLISHED")).as_deref(),
            Some("CLOSE → SYN_SENT → ESTABLISHED")
        );
        assert_eq!(
            chain(&s, "ESTABLISHED", None).as_deref(),
            Some("ESTABLISHED → FIN_WAIT1 → FIN_WAIT2 → TIME_WAIT")
        );
        assert_eq!(chain(&s, "LISTEN", None), None);
    }

    #[test]
    fn a_missing_step_is_shown_as_missing_and_fails_its_check() {
        let g = Gathered {
            records: vec![],
            report: json!({"client": {"fd": 3, "local_port": 40000, "read": 5, "wrote": 5}}),
            range: (32768, 60999),
        };
        let b = build("tcp-client", &g, Lang::En);
        assert_eq!(b.rows[0].live, Lang::En.t("missing"));
        assert!(b.checks.iter().any(|c| !c.ok()));
    }

    #[test]
    fn the_ports_table_counts_each_range() {
        let g = Gathered {
            records: vec![
                json!({"type": "socket", "proto": "tcp", "lport": 22, "rport": 0, "listening": true, "lport_service": "ssh"}),
                json!({"type": "socket", "proto": "tcp", "lport": 8080, "rport": 0, "listening": true}),
                json!({"type": "socket", "proto": "udp", "lport": 53000, "rport": 0, "listening": false}),
                json!({"type": "socket", "proto": "tcp", "lport": 40000, "rport": 80, "listening": false}),
            ],
            report: Value::Null,
            range: (32768, 60999),
        };
        let b = build("ports", &g, Lang::En);
        assert!(
            b.rows[0].live.starts_with("1 listening"),
            "{}",
            b.rows[0].live
        );
        assert!(b.rows[0].live.contains("22/tcp (ssh)"));
        assert!(b.rows[1].live.starts_with("1 listening"));
        assert!(b.rows[2].live.starts_with("1 listening"));
        // 32768–49151 and 49152–60999.
        assert_eq!(b.rows[3].values["registered"], 16384);
        assert_eq!(b.rows[3].values["dynamic"], 11848);
    }
}
