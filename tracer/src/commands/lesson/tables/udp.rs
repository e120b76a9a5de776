//! The UDP lesson: no connection, the port bound at the first sendto.
use serde_json::{json, Value};

use super::*;

pub(super) fn udp(b: &mut Built, s: &Stories, g: &Gathered, lang: Lang) {
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
