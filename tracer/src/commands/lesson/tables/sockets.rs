//! Lessons on several sockets at once: the tabs' ports, one port shared by a listener and its
//! connections, and a connection per request against one kept open.
use serde_json::{json, Value};

use super::*;

pub(super) fn ephemeral(b: &mut Built, s: &Stories, g: &Gathered, lang: Lang) {
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

pub(super) fn socket(b: &mut Built, s: &Stories, g: &Gathered, lang: Lang) {
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

pub(super) fn http(b: &mut Built, s: &Stories, g: &Gathered, lang: Lang) {
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
