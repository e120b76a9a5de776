//! Each lesson's table, built from what the trace printed (`socket_story` records and their
//! steps' `detail`) and checked against what the scenario's own calls returned.
use serde_json::{json, Value};
use tracer_common::PortClass;

use super::{Built, Check, Gathered, Row};
use crate::i18n::Lang;

/// Builds lesson `name`'s rows, notes and checks.
pub fn build(name: &str, g: &Gathered, lang: Lang) -> Built {
    let stories = Stories::of(&g.records);
    let mut b = Built::default();
    match name {
        "ports" => ports(&mut b, g, lang),
        "tcp-server" => tcp_server(&mut b, &stories, g, lang),
        "tcp-client" => tcp_client(&mut b, &stories, g, lang),
        "udp" => udp(&mut b, &stories, g, lang),
        "handshake" => handshake(&mut b, &stories, g, lang),
        "ephemeral" => ephemeral(&mut b, &stories, g, lang),
        "socket" => socket(&mut b, &stories, g, lang),
        "http" => http(&mut b, &stories, g, lang),
        "nat" => nat(&mut b, g, lang),
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

fn tcp_server(b: &mut Built, s: &Stories, g: &Gathered, lang: Lang) {
    let listener = s.role("listener");
    let accepted = s.role("accepted");
    let r = &g.report["server"];
    socket_row(b, listener, "tcp.socket", &r["listen_fd"], lang);
    let port = bind_row(b, listener, "tcp.bind", &r["port"], lang);
    // ③ listen
    let listen = listener.and_then(|l| step(l, "listen"));
    let states = listener.and_then(|l| chain(l, "CLOSE", Some("LISTEN")));
    let live = listen.map(|d| {
        lang.f(
            "live.listen",
            &[
                ("backlog", &d["backlog"]),
                ("states", &states.clone().unwrap_or_default()),
            ],
        )
    });
    b.rows.push(row(
        "③",
        "listen()",
        lang.t("tcp.listen").into(),
        live,
        json!({"backlog": listen.map(|d| d["backlog"].clone()), "states": states}),
        lang,
    ));
    // ④ accept: the listener's side, and the new socket's handshake
    let accept = listener.and_then(|l| step(l, "accept"));
    let handshake = accepted.and_then(|a| chain(a, "LISTEN", Some("ESTABLISHED")));
    let waited = accepted
        .and_then(|a| step(a, "accepted"))
        .and_then(|d| d["waited_ns"].as_u64());
    let live = accept.map(|d| {
        lang.f(
            "live.accept",
            &[
                ("fd", &d["fd"]),
                ("peer", &text(&d["peer"])),
                ("states", &handshake.clone().unwrap_or_default()),
                ("waited", &waited.map_or_else(|| "?".into(), duration)),
            ],
        )
    });
    b.rows.push(row("④", "accept()", lang.t("tcp.accept").into(), live, json!({"fd": accept.map(|d| d["fd"].clone()), "peer": accept.map(|d| d["peer"].clone()), "handshake": handshake, "waited_ns": waited}), lang));
    check(
        b,
        "accept() fd",
        accept.map_or(Value::Null, |d| d["fd"].clone()),
        r["accept_fd"].clone(),
    );
    check(
        b,
        "accept() peer",
        accept.map_or(Value::Null, |d| d["peer"].clone()),
        r["peer"].clone(),
    );
    // ⑤ read/write
    let data = accepted.and_then(|a| step(a, "data"));
    data_row(
        b,
        "⑤",
        "read()/write()",
        "tcp.server.rw",
        data,
        (&r["read"], &r["wrote"]),
        lang,
    );
    // ⑥ close: the accepted socket, then the listener
    close_row(b, "⑥", accepted, "ESTABLISHED", lang);
    close_row(b, "⑥", listener, "LISTEN", lang);
    range_note(b, g, port, lang);
    if let (Some(w), Some(d)) = (waited, listen) {
        b.beyond.push(lang.f(
            "beyond.accept",
            &[("waited", &duration(w)), ("backlog", &d["backlog"])],
        ));
    }
    if let (Some(l), Some(a)) = (listener.and_then(|l| step(l, "socket")), accept) {
        b.beyond.push(lang.f(
            "beyond.twosockets",
            &[("lfd", &l["fd"]), ("afd", &a["fd"]), ("port", &port)],
        ));
    }
    timewait_note(b, s, lang);
}

fn data_row(
    b: &mut Built,
    step_label: &str,
    call: &str,
    notes_key: &str,
    data: Option<&Value>,
    (read, wrote): (&Value, &Value),
    lang: Lang,
) {
    let live = data.map(|d| {
        lang.f(
            "live.rw",
            &[
                ("read", &d["received_bytes"]),
                ("reads", &d["receives"]),
                ("wrote", &d["sent_bytes"]),
                ("writes", &d["sends"]),
            ],
        )
    });
    b.rows.push(row(
        step_label,
        call,
        lang.t(notes_key).into(),
        live,
        data.cloned().unwrap_or(Value::Null),
        lang,
    ));
    check(
        b,
        "bytes read",
        data.map_or(Value::Null, |d| d["received_bytes"].clone()),
        read.clone(),
    );
    check(
        b,
        "bytes written",
        data.map_or(Value::Null, |d| d["sent_bytes"].clone()),
        wrote.clone(),
    );
}

/// Who closed first keeps TIME_WAIT; the other side's close, for contrast.
fn timewait_note(b: &mut Built, s: &Stories, lang: Lang) {
    let (Some(client), Some(accepted)) = (s.role("client"), s.role("accepted")) else {
        return;
    };
    let client_tw = transitions(client).iter().any(|(_, n)| n == "TIME_WAIT");
    let (first, first_story, other) = if client_tw {
        ("side.client", client, accepted)
    } else {
        ("side.server", accepted, client)
    };
    let port = step(first_story, "connect")
        .map_or_else(|| port_of(&first_story["lport"]), |d| port_of(&d["port"]));
    let other_states = chain(other, "ESTABLISHED", None).unwrap_or_default();
    b.beyond.push(lang.f(
        "beyond.timewait",
        &[
            ("side", &lang.t(first)),
            ("port", &port),
            ("states", &other_states),
        ],
    ));
}

fn tcp_client(b: &mut Built, s: &Stories, g: &Gathered, lang: Lang) {
    let client = s.role("client");
    let r = &g.report["client"];
    socket_row(b, client, "tcp.socket", &r["fd"], lang);
    let connect = client.and_then(|c| step(c, "connect"));
    let port = connect.map_or(0, |d| port_of(&d["port"]));
    let states = client.and_then(|c| chain(c, "CLOSE", Some("ESTABLISHED")));
    let live = connect.map(|d| {
        lang.f(
            "live.connect",
            &[
                ("remote", &text(&d["remote"])),
                ("local", &text(&d["local"])),
                ("port", &port),
                ("class", &class(lang, port)),
                ("states", &states.clone().unwrap_or_default()),
            ],
        )
    });
    b.rows.push(row(
        "②",
        "connect()",
        lang.t("tcp.connect").into(),
        live,
        json!({"detail": connect, "states": states}),
        lang,
    ));
    check(
        b,
        "connect() local port (getsockname)",
        json!(port),
        r["local_port"].clone(),
    );
    let data = client.and_then(|c| step(c, "data"));
    data_row(
        b,
        "③",
        "write()/read()",
        "tcp.client.rw",
        data,
        (&r["read"], &r["wrote"]),
        lang,
    );
    close_row(b, "④", client, "ESTABLISHED", lang);
    range_note(b, g, port, lang);
    timewait_note(b, s, lang);
}

fn udp(b: &mut Built, s: &Stories, g: &Gathered, lang: Lang) {
    let server = s.udp_with("bind");
    let client = s.udp_with("autobind");
    let r = &g.report;
    // The server: ① socket ② bind ③ recvfrom (+ its reply) ④ close
    socket_row(b, server, "tcp.socket", &r["server"]["fd"], lang);
    bind_row(b, server, "udp.bind", &r["server"]["port"], lang);
    let sdata = server.and_then(|sv| step(sv, "data"));
    let peer = sdata
        .and_then(|d| d["peers"].as_array())
        .and_then(|p| p.first())
        .cloned()
        .unwrap_or(Value::Null);
    let live = sdata.map(|d| {
        lang.f(
            "live.recvfrom",
            &[("bytes", &d["received_bytes"]), ("peer", &text(&peer))],
        )
    });
    b.rows.push(row(
        "③",
        "recvfrom()",
        lang.t("udp.recvfrom").into(),
        live,
        sdata.cloned().unwrap_or(Value::Null),
        lang,
    ));
    check(
        b,
        "recvfrom() sender",
        peer.clone(),
        r["server"]["from"].clone(),
    );
    let live = sdata.map(|d| {
        lang.f(
            "live.sendto.reply",
            &[("bytes", &d["sent_bytes"]), ("peer", &text(&peer))],
        )
    });
    b.rows.push(row(
        "+",
        "sendto()",
        lang.t("udp.reply").into(),
        live,
        Value::Null,
        lang,
    ));
    udp_close(b, "④", server, lang);
    // The client: ① socket ② sendto (autobind) ③ close
    socket_row(b, client, "tcp.socket", &r["client"]["fd"], lang);
    let auto = client.and_then(|c| step(c, "autobind"));
    let cdata = client.and_then(|c| step(c, "data"));
    let port = auto.map_or(0, |d| port_of(&d["port"]));
    let live = auto.map(|d| {
        lang.f(
            "live.sendto.autobind",
            &[
                (
                    "bytes",
                    &cdata.map_or(Value::Null, |c| c["sent_bytes"].clone()),
                ),
                ("remote", &text(&d["remote"])),
                ("port", &port),
            ],
        )
    });
    b.rows.push(row(
        "②",
        "sendto()",
        lang.t("udp.sendto").into(),
        live,
        auto.cloned().unwrap_or(Value::Null),
        lang,
    ));
    check(
        b,
        "sendto() autobound port (getsockname)",
        json!(port),
        r["client"]["autobound_port"].clone(),
    );
    let live = cdata.map(|d| {
        lang.f(
            "live.recvfrom",
            &[
                ("bytes", &d["received_bytes"]),
                // Who sent the answer, as the kernel's per-socket peers have it.
                ("peer", &text(&d["peers"][0])),
            ],
        )
    });
    b.rows.push(row(
        "+",
        "recvfrom()",
        lang.t("udp.client.recvfrom").into(),
        live,
        Value::Null,
        lang,
    ));
    udp_close(b, "③", client, lang);
    let stateless = [server, client]
        .iter()
        .flatten()
        .all(|st| transitions(st).is_empty());
    if stateless {
        b.beyond.push(lang.f("beyond.udp", &[("port", &port)]));
    }
    b.beyond
        .push(lang.f("beyond.udp.peer", &[("peer", &text(&peer))]));
    range_note(b, g, port, lang);
}

fn udp_close(b: &mut Built, step_label: &str, story: Option<&Value>, lang: Lang) {
    let d = story.and_then(|s| step(s, "close"));
    let live = d.map(|d| lang.f("live.udp.close", &[("fd", &d["fd"])]));
    b.rows.push(row(
        step_label,
        "close()",
        lang.t("udp.close").into(),
        live,
        d.cloned().unwrap_or(Value::Null),
        lang,
    ));
}

/// One side's transition (side, old, new).
type Move = (&'static str, &'static str, &'static str);
/// A handshake row: label, packet, the notes' words, the moves it shows.
type HandshakeRow = (&'static str, &'static str, &'static str, &'static [Move]);

fn handshake(b: &mut Built, s: &Stories, g: &Gathered, lang: Lang) {
    let client = s.role("client");
    let server = s.role("accepted");
    // The two stories are the scenario's two ends: their ports as its own calls saw them.
    let client_port = client
        .and_then(|c| step(c, "connect"))
        .map_or(Value::Null, |d| d["port"].clone());
    check(
        b,
        "the client's port (getsockname)",
        client_port,
        g.report["client"]["local_port"].clone(),
    );
    let server_port = server.map_or(Value::Null, |a| a["lport"].clone());
    check(
        b,
        "the server's port (getsockname)",
        server_port,
        g.report["server"]["port"].clone(),
    );
    let seen = |story: Option<&Value>, old: &str, new: &str| {
        story.is_some_and(|st| transitions(st).iter().any(|(o, n)| o == old && n == new))
    };
    // (label, packet, notes, [(side, old, new)])
    let rows: [HandshakeRow; 7] = [
        (
            "3-way ①",
            "SYN",
            "hs.syn",
            &[("client", "CLOSE", "SYN_SENT")],
        ),
        (
            "3-way ②",
            "SYN-ACK",
            "hs.synack",
            &[("server", "LISTEN", "SYN_RECV")],
        ),
        (
            "3-way ③",
            "ACK",
            "hs.ack",
            &[
                ("client", "SYN_SENT", "ESTABLISHED"),
                ("server", "SYN_RECV", "ESTABLISHED"),
            ],
        ),
        (
            "4-way ①",
            "FIN",
            "hs.fin1",
            &[("client", "ESTABLISHED", "FIN_WAIT1")],
        ),
        (
            "4-way ②",
            "ACK",
            "hs.ack1",
            &[
                ("server", "ESTABLISHED", "CLOSE_WAIT"),
                ("client", "FIN_WAIT1", "FIN_WAIT2"),
            ],
        ),
        (
            "4-way ③",
            "FIN",
            "hs.fin2",
            &[("server", "CLOSE_WAIT", "LAST_ACK")],
        ),
        (
            "4-way ④",
            "ACK",
            "hs.ack2",
            &[
                ("client", "FIN_WAIT2", "TIME_WAIT"),
                ("server", "LAST_ACK", "CLOSE"),
            ],
        ),
    ];
    for (label, packet, notes, moves) in rows {
        let mut parts = Vec::new();
        let mut values = Vec::new();
        for (side, old, new) in moves {
            let story = if *side == "client" { client } else { server };
            let ok = seen(story, old, new);
            let states = if ok {
                format!("{old} → {new}")
            } else {
                lang.t("missing").to_string()
            };
            parts.push(lang.f(
                "live.side",
                &[
                    ("side", &lang.t(&format!("side.{side}"))),
                    ("states", &states),
                ],
            ));
            values.push(json!({"side": side, "old_state": old, "new_state": new, "seen": ok}));
        }
        b.rows.push(Row {
            step: label.to_string(),
            call: packet.to_string(),
            notes: lang.t(notes).to_string(),
            live: parts.join("; "),
            values: Value::Array(values),
        });
    }
    timewait_note(b, s, lang);
}

fn ephemeral(b: &mut Built, s: &Stories, g: &Gathered, lang: Lang) {
    let mut clients = s.all("client");
    clients.sort_by_key(|c| c["id"].as_u64());
    let program: Vec<u16> = g.report["tab_ports"]
        .as_array()
        .map(|a| a.iter().map(port_of).collect())
        .unwrap_or_default();
    let mut ports = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let d = step(c, "connect");
        let port = d.map_or(0, |d| port_of(&d["port"]));
        ports.push(port);
        let seen = program.get(i).copied().unwrap_or(0);
        let live = d.map(|d| {
            lang.f(
                "live.tab",
                &[
                    ("port", &port),
                    ("server", &text(&d["remote"])),
                    ("seen", &seen),
                ],
            )
        });
        b.rows.push(row(
            &format!("{}", i + 1),
            "connect()",
            lang.f("eph.tab", &[("n", &(i + 1))]),
            live,
            d.cloned().unwrap_or(Value::Null),
            lang,
        ));
    }
    let mut kernel_sorted = ports.clone();
    kernel_sorted.sort_unstable();
    let mut program_sorted = program.clone();
    program_sorted.sort_unstable();
    check(
        b,
        "the tabs' ports (getsockname)",
        json!(kernel_sorted),
        json!(program_sorted),
    );
    let list = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    b.beyond
        .push(lang.f("beyond.tabs", &[("n", &ports.len()), ("ports", &list)]));
    range_note(b, g, ports.first().copied().unwrap_or(0), lang);
}

fn ports(b: &mut Built, g: &Gathered, lang: Lang) {
    // Listening TCP sockets and bound, unconnected UDP ones: distinct (protocol, port).
    let mut seen: Vec<(String, u16, Option<String>)> = g
        .records
        .iter()
        .filter(|r| r["type"] == "socket")
        .filter(|r| {
            r["listening"] == true || (r["proto"] == "udp" && r["rport"] == 0 && r["lport"] != 0)
        })
        .map(|r| {
            (
                text(&r["proto"]),
                port_of(&r["lport"]),
                r["lport_service"].as_str().map(str::to_string),
            )
        })
        .collect();
    seen.sort();
    seen.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    for (label, key, class) in [
        ("0–1023", "ports.well-known", PortClass::WellKnown),
        ("1024–49151", "ports.registered", PortClass::Registered),
        ("49152–65535", "ports.dynamic", PortClass::Dynamic),
    ] {
        let here: Vec<&(String, u16, Option<String>)> = seen
            .iter()
            .filter(|(_, p, _)| PortClass::of(*p) == class)
            .collect();
        let examples: Vec<String> = here
            .iter()
            .take(4)
            .map(|(proto, port, service)| match service {
                Some(s) => format!("{port}/{proto} ({s})"),
                None => format!("{port}/{proto}"),
            })
            .collect();
        let examples = if examples.is_empty() {
            String::new()
        } else {
            format!(": {}", examples.join(", "))
        };
        let live = lang.f(
            "live.ports.count",
            &[("n", &here.len()), ("examples", &examples)],
        );
        let values = json!({
            "class": class.as_str(),
            "listening": here.iter().map(|(proto, port, _)| json!({"proto": proto, "port": port})).collect::<Vec<_>>(),
        });
        b.rows
            .push(row(label, "", lang.t(key).into(), Some(live), values, lang));
    }
    let (low, high) = g.range;
    let registered =
        u32::from(high.min(49151)).saturating_sub(u32::from(low)) + u32::from(low <= 49151);
    let dynamic =
        u32::from(high).saturating_sub(u32::from(low.max(49152))) + u32::from(high >= 49152);
    let live = lang.f(
        "live.ports.kernel",
        &[
            ("low", &low),
            ("high", &high),
            ("registered", &registered),
            ("dynamic", &dynamic),
        ],
    );
    b.rows.push(row(
        &format!("{low}–{high}"),
        "",
        lang.t("ports.kernel").into(),
        Some(live),
        json!({"low": low, "high": high, "registered": registered, "dynamic": dynamic}),
        lang,
    ));
    b.beyond.push(lang.f(
        "beyond.ports.range",
        &[("low", &low), ("high", &high), ("registered", &registered)],
    ));
    b.beyond.push(lang.t("beyond.ports").to_string());
}

/// `TCP 127.0.0.1:8080 ⇄ 127.0.0.1:40000` (`*` for a listener's remote end).
fn five_tuple(story: &Value) -> String {
    let remote = if story["rport"] == 0 {
        "*:*".to_string()
    } else {
        format!("{}:{}", text(&story["raddr"]), story["rport"])
    };
    format!(
        "{} {}:{} ⇄ {remote}",
        proto_name(&story["proto"]),
        text(&story["laddr"]),
        story["lport"]
    )
}

fn fd_of(story: &Value) -> Value {
    step(story, "socket")
        .or_else(|| step(story, "accepted"))
        .map_or(Value::Null, |d| d["fd"].clone())
}

fn socket(b: &mut Built, s: &Stories, g: &Gathered, lang: Lang) {
    let r = &g.report;
    let listener = s.role("listener");
    let live = listener.map(|l| {
        lang.f(
            "live.socket.listener",
            &[("tuple", &five_tuple(l)), ("fd", &fd_of(l))],
        )
    });
    b.rows.push(row(
        "1",
        "listen()",
        lang.t("socket.listener").into(),
        live,
        listener.map_or(
            Value::Null,
            |l| json!({"fd": fd_of(l), "lport": l["lport"]}),
        ),
        lang,
    ));
    check(
        b,
        "the listener's fd",
        listener.map_or(Value::Null, fd_of),
        r["listen_fd"].clone(),
    );
    check(
        b,
        "the listener's port (getsockname)",
        listener.map_or(Value::Null, |l| l["lport"].clone()),
        r["port"].clone(),
    );
    let mut accepted = s.all("accepted");
    accepted.sort_by_key(|a| a["id"].as_u64());
    let mut clients = s.all("client");
    clients.sort_by_key(|c| c["id"].as_u64());
    let sides = r["clients"].as_array().cloned().unwrap_or_default();
    let mut n = 1;
    for (i, side) in sides.iter().enumerate() {
        let want_port = side["client_port"].clone();
        let a = accepted.iter().find(|a| a["rport"] == want_port).copied();
        let c = clients.get(i).copied();
        n += 1;
        let live = a.map(|a| {
            let data = step(a, "data");
            lang.f(
                "live.socket.accepted",
                &[
                    ("tuple", &five_tuple(a)),
                    ("fd", &fd_of(a)),
                    (
                        "bytes",
                        &data.map_or(Value::Null, |d| d["received_bytes"].clone()),
                    ),
                ],
            )
        });
        b.rows.push(row(
            &n.to_string(),
            "accept()",
            lang.f("socket.accepted", &[("n", &(i + 1))]),
            live,
            a.map_or(
                Value::Null,
                |a| json!({"fd": fd_of(a), "rport": a["rport"]}),
            ),
            lang,
        ));
        check(
            b,
            "an accepted socket's fd",
            a.map_or(Value::Null, fd_of),
            side["accepted_fd"].clone(),
        );
        check(
            b,
            "bytes the accepted socket got",
            a.and_then(|a| step(a, "data"))
                .map_or(Value::Null, |d| d["received_bytes"].clone()),
            side["bytes"].clone(),
        );
        n += 1;
        let live = c.map(|c| {
            lang.f(
                "live.socket.client",
                &[("tuple", &five_tuple(c)), ("fd", &fd_of(c))],
            )
        });
        b.rows.push(row(
            &n.to_string(),
            "connect()",
            lang.f("socket.client", &[("n", &(i + 1))]),
            live,
            c.map_or(
                Value::Null,
                |c| json!({"fd": fd_of(c), "lport": c["lport"]}),
            ),
            lang,
        ));
        check(
            b,
            "a client's port (getsockname)",
            c.map_or(Value::Null, |c| c["lport"].clone()),
            want_port,
        );
    }
    let port = listener.map_or(Value::Null, |l| l["lport"].clone());
    let received: Vec<String> = accepted
        .iter()
        .map(|a| {
            let bytes = step(a, "data").map_or(Value::Null, |d| d["received_bytes"].clone());
            format!("{}:{} → {} B", text(&a["raddr"]), a["rport"], bytes)
        })
        .collect();
    b.beyond.push(lang.f(
        "beyond.demux",
        &[
            ("port", &port),
            ("n", &(accepted.len() + 1)),
            ("received", &received.join(", ")),
        ],
    ));
}

fn http(b: &mut Built, s: &Stories, g: &Gathered, lang: Lang) {
    let r = &g.report;
    let ports: Vec<Value> = r["ports"].as_array().cloned().unwrap_or_default();
    let clients = s.all("client");
    let phases = [
        (
            "HTTP/1.0",
            "http.close",
            r["requests"].clone(),
            json!(r["requests"]),
        ),
        (
            "keep-alive",
            "http.keepalive",
            r["requests"].clone(),
            json!(1),
        ),
        ("socket", "http.socket", r["messages"].clone(), json!(1)),
    ];
    let mut connections = Vec::new();
    for (i, (label, notes, calls, want)) in phases.into_iter().enumerate() {
        let port = ports.get(i).cloned().unwrap_or(Value::Null);
        let mine: Vec<&Value> = clients
            .iter()
            .copied()
            .filter(|c| c["rport"] == port)
            .collect();
        let mut local_ports: Vec<u64> = mine.iter().filter_map(|c| c["lport"].as_u64()).collect();
        local_ports.sort_unstable();
        local_ports.dedup();
        let sum = |field: &str| -> u64 {
            mine.iter()
                .filter_map(|c| step(c, "data"))
                .filter_map(|d| d[field].as_u64())
                .sum()
        };
        let kinds: Vec<&str> = mine.iter().filter_map(|c| c["lifetime"].as_str()).collect();
        let kind = match kinds.first() {
            Some(k) if kinds.iter().all(|x| x == k) => Some(lang.t(&format!("lifetime.{k}")))
                .filter(|t| !t.is_empty())
                .unwrap_or("?"),
            _ => "?",
        };
        let live = lang.f(
            "live.http",
            &[
                ("calls", &calls),
                ("conns", &mine.len()),
                ("ports", &local_ports.len()),
                ("out", &sum("sent_bytes")),
                ("in", &sum("received_bytes")),
                ("kind", &kind),
            ],
        );
        let values = json!({"connections": mine.len(), "local_ports": local_ports, "sent_bytes": sum("sent_bytes"), "received_bytes": sum("received_bytes"), "lifetime": kinds.first()});
        b.rows.push(row(
            label,
            "",
            lang.t(notes).into(),
            Some(live),
            values,
            lang,
        ));
        check(b, "connections made", json!(mine.len()), want);
        connections.push(mine.len());
    }
    // Said only when the run showed it: a connection per request, one for the rest.
    if connections.len() == 3 && connections[0] > 1 && connections[1] == 1 && connections[2] == 1 {
        b.beyond.push(lang.f(
            "beyond.http",
            &[("n", &connections[0]), ("m", &r["messages"])],
        ));
    }
}

fn endpoint(tuple: &Value, which: &str) -> String {
    format!(
        "{}:{}",
        text(&tuple[which]),
        tuple[if which == "src" { "sport" } else { "dport" }]
    )
}

/// `src=A dst=B sport=C dport=D` ×2 of a `conntrack -L` line: (original, reply).
fn conntrack_tuples(line: &str) -> Option<([String; 4], [String; 4])> {
    let fields: Vec<&str> = line
        .split_whitespace()
        .filter(|f| {
            ["src=", "dst=", "sport=", "dport="]
                .iter()
                .any(|k| f.starts_with(k))
        })
        .filter_map(|f| f.split_once('=').map(|(_, v)| v))
        .collect();
    let own = |i: usize| fields.get(i).map(|s| s.to_string());
    Some((
        [own(0)?, own(1)?, own(2)?, own(3)?],
        [own(4)?, own(5)?, own(6)?, own(7)?],
    ))
}

fn nat(b: &mut Built, g: &Gathered, lang: Lang) {
    let bindings: Vec<&Value> = g
        .records
        .iter()
        .filter(|r| r["type"] == "nat_binding")
        .collect();
    let r = &g.report;
    let peers: Vec<String> = r["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["peers"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect();
    let conntrack: Vec<([String; 4], [String; 4])> = r["conntrack"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| conntrack_tuples(l.as_str()?))
        .collect();
    let mut pat = None;
    let (mut kept_ports, mut address_only) = (true, 0);
    for client in r["clients"].as_array().into_iter().flatten() {
        let local = text(&client["local"]);
        let shows = client["shows"].as_str().unwrap_or("?");
        let binding = bindings
            .iter()
            .find(|b| endpoint(&b["original"], "src") == local)
            .copied();
        let (label, notes) = match shows {
            "pat" => ("PAT/NAPT", "nat.pat"),
            "static" => ("static NAT", "nat.static"),
            "dynamic" => ("dynamic NAT", "nat.dynamic"),
            _ => ("DNAT", "nat.dnat"),
        };
        let live = binding.map(|bd| {
            let (o, t) = (&bd["original"], &bd["translated"]);
            let changed = match (
                bd["address_translated"] == true,
                bd["port_translated"] == true,
            ) {
                (_, true) => lang.t("nat.changed.both"),
                (true, false) => lang.t("nat.changed.address"),
                _ => lang.t("nat.changed.none"),
            };
            let key = if shows == "dnat" {
                "live.nat.dnat"
            } else {
                "live.nat.snat"
            };
            // What the server's accept() returned (the translated source, when it got it).
            let tsrc = endpoint(t, "src");
            let seen = peers
                .iter()
                .find(|p| **p == tsrc)
                .cloned()
                .unwrap_or_else(|| lang.t("missing").to_string());
            lang.f(
                key,
                &[
                    ("from", &endpoint(o, "src")),
                    ("to", &endpoint(o, "dst")),
                    ("tfrom", &endpoint(t, "src")),
                    ("tto", &endpoint(t, "dst")),
                    ("kind", &text(&bd["kind"]).to_uppercase()),
                    ("changed", &changed),
                    ("seen", &seen),
                ],
            )
        });
        b.rows.push(row(label, "", lang.t(notes).into(), live, binding.map_or(Value::Null, |bd| json!({"kind": bd["kind"], "original": bd["original"], "translated": bd["translated"], "port_translated": bd["port_translated"], "address_translated": bd["address_translated"]})), lang));
        let Some(bd) = binding else {
            check(
                b,
                "a binding for each connection",
                Value::Null,
                json!(local),
            );
            continue;
        };
        // What the server's accept() saw is the translated source.
        let tsrc = endpoint(&bd["translated"], "src");
        check(
            b,
            "the server's peer (accept)",
            json!(tsrc),
            json!(peers.iter().find(|p| **p == tsrc)),
        );
        // conntrack's entry for the same original tuple replies to the translated one.
        let o = &bd["original"];
        let entry = conntrack.iter().find(|(orig, _)| {
            orig[0] == text(&o["src"])
                && orig[2].parse::<u64>().ok() == o["sport"].as_u64()
                && orig[3].parse::<u64>().ok() == o["dport"].as_u64()
        });
        let reply_to = entry.map(|(_, reply)| format!("{}:{}", reply[1], reply[3]));
        // The translated tuple as conntrack keeps it: the reply's direction.
        if let (Some((_, reply)), Some(last)) = (entry, b.rows.last_mut()) {
            last.live.push_str(&lang.f(
                "live.nat.conntrack",
                &[
                    ("rfrom", &format!("{}:{}", reply[0], reply[2])),
                    ("rto", &format!("{}:{}", reply[1], reply[3])),
                ],
            ));
        }
        let expect = if shows == "dnat" {
            // A port forward's reply comes from the inside server to the client.
            endpoint(&bd["translated"], "dst")
        } else {
            tsrc.clone()
        };
        let reply_from_or_to = if shows == "dnat" {
            entry.map(|(_, reply)| format!("{}:{}", reply[0], reply[2]))
        } else {
            reply_to
        };
        check(
            b,
            "conntrack's reply tuple",
            json!(expect),
            json!(reply_from_or_to),
        );
        if shows == "pat" {
            pat = Some((endpoint(o, "src"), tsrc));
        }
        if shows == "static" || shows == "dynamic" {
            kept_ports &= bd["port_translated"] == false;
            address_only += 1;
        }
    }
    // Said only when the run showed it.
    if let Some((from, to)) = pat {
        let server_saw_5000 = peers.iter().any(|p| p.ends_with(":5000"));
        if !server_saw_5000 && !to.ends_with(":5000") {
            b.beyond
                .push(lang.f("beyond.nat.pat", &[("from", &from), ("to", &to)]));
        }
    }
    if kept_ports && address_only > 0 {
        b.beyond.push(lang.t("beyond.nat.static").to_string());
    }
    if !conntrack.is_empty() {
        b.beyond.push(lang.t("beyond.nat.conntrack").to_string());
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
