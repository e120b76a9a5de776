//! The TCP lessons: the server's and the client's flows, and the handshakes.
use serde_json::{json, Value};

use super::*;

pub(super) fn tcp_server(b: &mut Built, s: &Stories, g: &Gathered, lang: Lang) {
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

pub(super) fn tcp_client(b: &mut Built, s: &Stories, g: &Gathered, lang: Lang) {
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

/// One side's transition (side, old, new).
type Move = (&'static str, &'static str, &'static str);
/// A handshake row: label, packet, the notes' words, the moves it shows.
type HandshakeRow = (&'static str, &'static str, &'static str, &'static [Move]);

pub(super) fn handshake(b: &mut Built, s: &Stories, g: &Gathered, lang: Lang) {
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
