//! The ports lesson: the three ranges and this machine's listeners in them.
use serde_json::json;
use tracer_common::PortClass;

use super::*;

pub(super) fn ports(b: &mut Built, g: &Gathered, lang: Lang) {
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
